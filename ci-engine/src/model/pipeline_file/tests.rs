//! Reading pipeline files: every key, every problem with its line, and the
//! example file shipped in `docs/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::line_of;
use crate::model::{Concurrency, Pipeline, PipelineFileError, Scope};

/// The error `text` gives, as (line, problem), checking it names the file.
fn problem(text: &str) -> (Option<usize>, String) {
    let error = Pipeline::from_toml(text, Path::new("ci.toml"))
        .expect_err("the pipeline file should be refused");
    assert_eq!(error.path, Path::new("ci.toml"));
    (error.line, error.problem)
}

fn read(text: &str) -> Pipeline {
    Pipeline::from_toml(text, Path::new("ci.toml"))
        .unwrap_or_else(|e| panic!("the pipeline file should be read: {e}"))
}

#[test]
fn every_key_reaches_the_step() {
    let p = read(
        r#"
[[step]]
name = "build"
concurrency = "exclusive"
timeout = "10m"
attempts = 3

[[step]]
name = "unit"
run = "test"
needs = ["build"]
limit = 2
group = "cpu"
scope = "pool"
same_runner_as = "build"
"#,
    );
    let build = &p.steps()[p.position("build").expect("build")];
    assert_eq!(build.concurrency, Concurrency::Exclusive);
    assert_eq!(build.timeout, Some(Duration::from_secs(600)));
    assert_eq!(build.max_attempts, Some(3));
    assert_eq!(build.runner_step(), "build");
    assert_eq!(build.scope, Scope::Runner);
    let unit = &p.steps()[p.position("unit").expect("unit")];
    assert_eq!(unit.run.as_deref(), Some("test"));
    assert_eq!(unit.needs, ["build"]);
    assert_eq!(unit.concurrency, Concurrency::Limit(2));
    assert_eq!(unit.group.as_deref(), Some("cpu"));
    assert_eq!(unit.scope, Scope::Pool);
    assert_eq!(unit.same_runner_as.as_deref(), Some("build"));
    assert_eq!((unit.timeout, unit.max_attempts), (None, None));
}

#[test]
fn defaults_and_order_follow_the_file() {
    let p = read(
        "[[step]]\nname = \"deploy\"\nneeds = [\"test\"]\n\
         [[step]]\nname = \"lint\"\n\
         [[step]]\nname = \"test\"\n",
    );
    let names: Vec<&str> = p.steps().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["lint", "test", "deploy"],
        "needs first, else file order"
    );
    let lint = &p.steps()[0];
    assert_eq!(lint.concurrency, Concurrency::Unlimited);
    assert_eq!(lint.scope, Scope::Runner);
    assert_eq!(
        (lint.run.as_deref(), lint.group.as_deref()),
        (None, None),
        "run and group default to the step's own"
    );
}

#[test]
fn inline_tables_are_steps_too() {
    let p = read(
        "step = [\n  { name = \"build\", concurrency = \"exclusive\" },\n  { name = \"test\", needs = [\"build\"] },\n]\n",
    );
    assert_eq!(p.len(), 2);
    assert_eq!(p.needs_of(1), &[0]);
}

#[test]
fn the_example_file_loads_with_the_steps_it_documents() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/pipeline.example.toml");
    let p = Pipeline::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = p.steps().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["lint", "build", "test", "smoke"]);
    for step in p.steps() {
        assert!(
            ["lint", "build", "test"].contains(&step.runner_step()),
            "the bundled simulator cannot run {:?}",
            step.runner_step()
        );
    }
    let at = |name: &str| p.position(name).expect(name);
    let class = |name: &str| &p.classes()[p.class_of(at(name))];
    assert_eq!(class("lint").limit, None);
    assert_eq!(
        (class("build").limit, class("build").scope),
        (Some(1), Scope::Runner)
    );
    assert_eq!(
        (class("test").limit, class("test").scope),
        (Some(1), Scope::Runner)
    );
    assert_eq!(p.needs_of(at("test")), &[at("build")]);
    assert_eq!(p.same_runner_as(at("test")), Some(at("build")));
    let build = &p.steps()[at("build")];
    assert_eq!(build.timeout, Some(Duration::from_secs(600)));
    assert_eq!(build.max_attempts, Some(3));
    assert_eq!(
        (class("smoke").limit, class("smoke").scope),
        (Some(1), Scope::Pool)
    );
    assert_eq!(p.steps()[at("smoke")].runner_step(), "lint");
    assert_eq!(p.needs_of(at("smoke")), &[at("test")]);
}

#[test]
fn a_missing_file_is_named_without_a_line() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-pipeline.toml");
    let error = Pipeline::load(&path).expect_err("no such file");
    assert_eq!(error.line, None);
    assert!(
        error.problem.starts_with("cannot read the file: "),
        "{}",
        error.problem
    );
    assert_eq!(
        error.to_string(),
        format!("{}: {}", path.display(), error.problem)
    );
}

#[test]
fn an_error_displays_as_file_line_problem() {
    let error = PipelineFileError {
        path: PathBuf::from("ci.toml"),
        line: Some(7),
        problem: "step \"test\" needs \"buld\", which is not a step of the pipeline".into(),
    };
    assert_eq!(
        error.to_string(),
        "ci.toml:7: step \"test\" needs \"buld\", which is not a step of the pipeline"
    );
}

#[test]
fn toml_syntax_errors_carry_the_parser_line() {
    let cases: &[(&str, usize)] = &[
        ("[[step]]\nname = \n", 2),
        ("[[step]]\nname = \"build\"\nname = \"test\"\n", 3),
        ("# comment\n\n[[step]\nname = \"a\"\n", 3),
        ("[[step]]\nname = \"a\n", 2),
    ];
    for (text, line) in cases {
        let (got_line, message) = problem(text);
        assert_eq!(got_line, Some(*line), "{text:?}: {message}");
        assert!(message.starts_with("invalid TOML: "), "{text:?}: {message}");
    }
}

/// Each case: the file, the line of the problem and its exact words.
fn assert_problems(cases: &[(&str, Option<usize>, &str)]) {
    for (text, line, message) in cases {
        assert_eq!(
            problem(text),
            (*line, (*message).to_owned()),
            "for the file:\n{text}"
        );
    }
}

#[test]
fn the_file_needs_steps_and_only_steps() {
    assert_problems(&[
        (
            "",
            None,
            "the pipeline has no steps: add a [[step]] table for each step",
        ),
        (
            "# nothing yet\nstep = []\n",
            None,
            "the pipeline has no steps: add a [[step]] table for each step",
        ),
        (
            "[[step]]\nname = \"a\"\n\n[stages]\nx = 1\n",
            Some(4),
            "unknown key \"stages\": a pipeline file holds only [[step]] tables",
        ),
        (
            "# one table\n[step]\nname = \"a\"\n",
            Some(2),
            "`step` must be an array of tables (write each step as a [[step]] table), not a table",
        ),
        (
            "step = \"lint\"\n",
            Some(1),
            "`step` must be an array of tables (write each step as a [[step]] table), not a string",
        ),
        (
            "step = [1]\n",
            Some(1),
            "step #1 must be a table, not an integer",
        ),
    ]);
}

#[test]
fn keys_and_types_are_checked() {
    assert_problems(&[
        (
            "[[step]]\nname = \"a\"\n\n[[step]]\nconcurrency = \"exclusive\"\n",
            Some(4),
            "step #2 has no name: add name = \"...\"",
        ),
        (
            "[[step]]\nname = 3\n",
            Some(2),
            "step #1: name must be a string, not an integer",
        ),
        (
            "[[step]]\nname = \"build\"\ntimout = \"10m\"\n",
            Some(3),
            "step \"build\": unknown key \"timout\"; a step may have name, run, needs, concurrency, limit, group, scope, same_runner_as, timeout, attempts",
        ),
        (
            "[[step]]\nname = \"build\"\nretry.count = 2\n",
            Some(3),
            "step \"build\": unknown key \"retry\"; a step may have name, run, needs, concurrency, limit, group, scope, same_runner_as, timeout, attempts",
        ),
        (
            "[[step]]\nname = \"test\"\nneeds = \"build\"\n",
            Some(3),
            "step \"test\": needs must be an array of step names, not a string",
        ),
        (
            "[[step]]\nname = \"test\"\nneeds = [\n  \"build\",\n  3,\n]\n",
            Some(5),
            "step \"test\": each of needs must be a string, not an integer",
        ),
        (
            "[[step]]\nname = \"test\"\nrun = true\n",
            Some(3),
            "step \"test\": run must be a string, not a boolean",
        ),
        (
            "[[step]]\nname = \"test\"\nsame_runner_as = [\"build\"]\n",
            Some(3),
            "step \"test\": same_runner_as must be a string, not an array",
        ),
        (
            "[[step]]\nname = \"unit\"\ngroup = 1.5\n",
            Some(3),
            "step \"unit\": group must be a string, not a float",
        ),
        (
            "[[step]]\nname = \"unit\"\ngroup = \"\"\n",
            Some(3),
            "step \"unit\": group must not be empty",
        ),
        (
            "[[step]]\nname = \"build\"\nattempts = \"3\"\n",
            Some(3),
            "step \"build\": attempts must be a whole number, not a string",
        ),
        (
            "[[step]]\nname = \"build\"\nconcurrency = 1\n",
            Some(3),
            "step \"build\": concurrency must be \"unlimited\" or \"exclusive\", not an integer",
        ),
    ]);
}

#[test]
fn words_and_numbers_are_checked() {
    assert_problems(&[
        (
            "[[step]]\nname = \"build\"\nconcurrency = \"exclusve\"\n",
            Some(3),
            "step \"build\": concurrency must be \"unlimited\" or \"exclusive\", not \"exclusve\"",
        ),
        (
            "[[step]]\nname = \"deploy\"\nconcurrency = \"exclusive\"\nscope = \"global\"\n",
            Some(4),
            "step \"deploy\": scope must be \"runner\" or \"pool\", not \"global\"",
        ),
        (
            "[[step]]\nname = \"unit\"\nconcurrency = \"exclusive\"\nlimit = 2\n",
            Some(4),
            "step \"unit\": limit and concurrency cannot both be set (limit = N means at most N at once; drop one)",
        ),
        (
            "[[step]]\nname = \"unit\"\nlimit = 2\nconcurrency = \"unlimited\"\n",
            Some(3),
            "step \"unit\": limit and concurrency cannot both be set (limit = N means at most N at once; drop one)",
        ),
        (
            "[[step]]\nname = \"unit\"\nlimit = 0\n",
            Some(3),
            "step \"unit\" has a concurrency limit of 0",
        ),
        (
            "[[step]]\nname = \"unit\"\nlimit = -1\n",
            Some(3),
            "step \"unit\": limit must be a whole number from 1 to 4294967295, not -1",
        ),
        (
            "[[step]]\nname = \"build\"\nattempts = 0x1_0000_0000\n",
            Some(3),
            "step \"build\": attempts must be a whole number from 1 to 4294967295, not 0x100000000",
        ),
        (
            "[[step]]\nname = \"build\"\n\nattempts = 0\n",
            Some(4),
            "step \"build\": attempts must be at least 1",
        ),
        (
            "[[step]]\nname = \"build\"\ntimeout = \"10 min\"\n",
            Some(3),
            "step \"build\": timeout must be a whole number and a unit (ms, s, m or h) such as \"500ms\", \"90s\", \"10m\" or \"1h\", not \"10 min\"",
        ),
        (
            "[[step]]\nname = \"build\"\ntimeout = 600\n",
            Some(3),
            "step \"build\": timeout must be a string, not an integer",
        ),
        (
            "[[step]]\nname = \"build\"\nattempts = 2\ntimeout = \"0s\"\n",
            Some(4),
            "step \"build\": the timeout must be longer than zero",
        ),
    ]);
}

#[test]
fn names_are_checked() {
    assert_problems(&[
        (
            "[[step]]\nname = \"\"\n",
            Some(2),
            "invalid step name \"\": use letters, digits, '-', '_' or '.'",
        ),
        (
            "[[step]]\nname = \"a\"\n[[step]]\nname = \"unit tests\"\n",
            Some(4),
            "invalid step name \"unit tests\": use letters, digits, '-', '_' or '.'",
        ),
        (
            "[[step]]\nname = \"unit\"\nrun = \"go test\"\n",
            Some(3),
            "step \"unit\" runs \"go test\": use letters, digits, '-', '_' or '.'",
        ),
        (
            "[[step]]\nname = \"build\"\n\n[[step]]\nname = \"lint\"\n\n[[step]]\nname = \"build\"\n",
            Some(8),
            "step \"build\" is defined twice",
        ),
    ]);
}

#[test]
fn needs_between_steps_are_checked() {
    assert_problems(&[
        (
            "[[step]]\nname = \"build\"\n\n[[step]]\nname = \"test\"\nneeds = [\n  \"lint\",\n  \"buld\",\n]\n\n[[step]]\nname = \"lint\"\n",
            Some(8),
            "step \"test\" needs \"buld\", which is not a step of the pipeline",
        ),
        (
            "[[step]]\nname = \"a\"\nneeds = [\"c\"]\n[[step]]\nname = \"b\"\nneeds = [\"a\"]\n[[step]]\nname = \"c\"\nneeds = [\"b\"]\n",
            Some(3),
            "the needs form a cycle: a -> c -> b -> a",
        ),
        (
            "[[step]]\nname = \"lint\"\n[[step]]\nname = \"a\"\nneeds = [\"lint\", \"a\"]\n",
            Some(5),
            "the needs form a cycle: a -> a",
        ),
        (
            "[[step]]\nname = \"build\"\n[[step]]\nname = \"test\"\nneeds = [\"build\"]\nsame_runner_as = \"bild\"\n",
            Some(6),
            "step \"test\" asks for the runner of \"bild\", which is not a step of the pipeline",
        ),
        (
            "[[step]]\nname = \"build\"\n[[step]]\nname = \"lint\"\nsame_runner_as = \"build\"\n",
            Some(5),
            "step \"lint\" asks for the runner of \"build\", which is not a step it needs (directly or through its needs)",
        ),
    ]);
}

#[test]
fn a_group_must_agree_on_its_limit_and_scope() {
    assert_problems(&[
        (
            "[[step]]\nname = \"unit\"\nlimit = 2\ngroup = \"cpu\"\n\n[[step]]\nname = \"e2e\"\nconcurrency = \"exclusive\"\ngroup = \"cpu\"\n",
            Some(9),
            "group \"cpu\" is declared with different concurrency limits or scopes: step \"e2e\" has concurrency \"exclusive\", scope \"runner\", step \"unit\" has limit 2, scope \"runner\"",
        ),
        (
            "[[step]]\nname = \"a\"\ngroup = \"g\"\n[[step]]\nname = \"b\"\ngroup = \"g\"\n[[step]]\nname = \"c\"\ngroup = \"g\"\nscope = \"pool\"\n",
            Some(9),
            "group \"g\" is declared with different concurrency limits or scopes: step \"c\" has concurrency \"unlimited\", scope \"pool\", step \"a\" has concurrency \"unlimited\", scope \"runner\"",
        ),
    ]);
}

#[test]
fn a_group_that_agrees_is_one_class() {
    let p = read(
        "[[step]]\nname = \"unit\"\nlimit = 2\ngroup = \"cpu\"\nscope = \"pool\"\n\
         [[step]]\nname = \"e2e\"\nlimit = 2\ngroup = \"cpu\"\nscope = \"pool\"\n",
    );
    assert_eq!(p.classes().len(), 1);
    assert_eq!(p.classes()[0].limit, Some(2));
    assert_eq!(p.classes()[0].scope, Scope::Pool);
}

#[test]
fn lines_count_from_one_and_the_end_stays_on_the_last_line() {
    let text = "a\nbc\n";
    assert_eq!(line_of(text, 0), 1);
    assert_eq!(line_of(text, 1), 1);
    assert_eq!(line_of(text, 2), 2);
    assert_eq!(line_of(text, text.len()), 2);
    assert_eq!(line_of("a\nb", 3), 2);
    assert_eq!(line_of("", 0), 1);
}
