//! One `[[step]]` table into a [`StepSpec`]: each key's type, words and range,
//! and where each value was written, so that later errors can name its line.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::DeValue;

use super::duration::parse_duration;
use super::{Problem, in_file_order};
use crate::model::{Concurrency, Scope, StepSpec};

/// The keys a step table may hold, in the order the documentation lists them.
pub(super) const STEP_KEYS: [&str; 10] = [
    "name",
    "run",
    "needs",
    "concurrency",
    "limit",
    "group",
    "scope",
    "same_runner_as",
    "timeout",
    "attempts",
];

/// A step as read from the file, with where its parts were written.
#[derive(Debug, Clone)]
pub(super) struct StepEntry {
    /// The step.
    pub spec: StepSpec,
    /// The table's header (`[[step]]`), for problems of the step as a whole.
    pub header: Range<usize>,
    /// The value of each key present.
    values: BTreeMap<String, Range<usize>>,
    /// Each element of `needs`, in the order of `spec.needs`.
    need_values: Vec<Range<usize>>,
}

impl StepEntry {
    /// Where the value of `key` was written, or the header when the key is absent.
    pub fn value_of(&self, key: &str) -> Range<usize> {
        self.values
            .get(key)
            .cloned()
            .unwrap_or_else(|| self.header.clone())
    }

    /// Where the first `needs` element naming `need` was written, or the
    /// `needs` value when none does.
    pub fn need(&self, need: &str) -> Range<usize> {
        self.spec
            .needs
            .iter()
            .position(|n| n == need)
            .and_then(|i| self.need_values.get(i).cloned())
            .unwrap_or_else(|| self.value_of("needs"))
    }
}

/// Reads the `number`-th (1-based) step table.
///
/// # Errors
/// A [`Problem`] at the key or value that is wrong: not a table, no `name`, an
/// unknown key, a value of the wrong type, an unknown word, a number out of
/// range, a bad duration, or `limit` together with `concurrency`.
pub(super) fn read_step(number: usize, table: &Spanned<DeValue<'_>>) -> Result<StepEntry, Problem> {
    let Some(keys) = table.get_ref().as_table() else {
        return Err(Problem::at(
            table.span(),
            format!(
                "step #{number} must be a table, not {}",
                a_type(table.get_ref())
            ),
        ));
    };
    let Some(name) = keys.get("name") else {
        return Err(Problem::at(
            table.span(),
            format!("step #{number} has no name: add name = \"...\""),
        ));
    };
    let label = format!("step #{number}");
    let name = string(&label, "name", name)?;
    let label = format!("step {name:?}");
    let mut entry = StepEntry {
        spec: StepSpec::new(name, Concurrency::Unlimited),
        header: table.span(),
        values: BTreeMap::new(),
        need_values: Vec::new(),
    };
    for (key, value) in in_file_order(keys) {
        let spec = &mut entry.spec;
        match key.get_ref().as_ref() {
            "name" => {}
            "run" => spec.run = Some(string(&label, "run", value)?),
            "needs" => {
                let Some(needs) = value.get_ref().as_array() else {
                    return Err(wrong_type(&label, "needs", "an array of step names", value));
                };
                for need in needs.iter() {
                    spec.needs.push(string(&label, "each of needs", need)?);
                    entry.need_values.push(need.span());
                }
            }
            "concurrency" => {
                spec.concurrency =
                    match word(&label, "concurrency", value, &["unlimited", "exclusive"])? {
                        "exclusive" => Concurrency::Exclusive,
                        _ => Concurrency::Unlimited,
                    }
            }
            "limit" => spec.concurrency = Concurrency::Limit(whole_number(&label, "limit", value)?),
            "group" => {
                let group = string(&label, "group", value)?;
                if group.is_empty() {
                    return Err(Problem::at(
                        value.span(),
                        format!("{label}: group must not be empty"),
                    ));
                }
                spec.group = Some(group);
            }
            "scope" => {
                spec.scope = match word(&label, "scope", value, &["runner", "pool"])? {
                    "pool" => Scope::Pool,
                    _ => Scope::Runner,
                }
            }
            "same_runner_as" => {
                spec.same_runner_as = Some(string(&label, "same_runner_as", value)?)
            }
            "timeout" => {
                let text = string(&label, "timeout", value)?;
                let timeout = parse_duration(&text)
                    .map_err(|why| Problem::at(value.span(), format!("{label}: timeout {why}")))?;
                spec.timeout = Some(timeout);
            }
            "attempts" => spec.max_attempts = Some(whole_number(&label, "attempts", value)?),
            unknown => {
                return Err(Problem::at(
                    key.span(),
                    format!(
                        "{label}: unknown key {unknown:?}; a step may have {}",
                        STEP_KEYS.join(", ")
                    ),
                ));
            }
        }
        entry.values.insert(key.get_ref().to_string(), value.span());
    }
    if entry.values.contains_key("limit") && entry.values.contains_key("concurrency") {
        return Err(Problem::at(
            entry.value_of("limit"),
            format!(
                "{label}: limit and concurrency cannot both be set (limit = N means at most N at once; drop one)"
            ),
        ));
    }
    Ok(entry)
}

/// The problem of a value of the wrong type.
fn wrong_type(label: &str, key: &str, wanted: &str, value: &Spanned<DeValue<'_>>) -> Problem {
    Problem::at(
        value.span(),
        format!(
            "{label}: {key} must be {wanted}, not {}",
            a_type(value.get_ref())
        ),
    )
}

/// The TOML type of `value` with its article: `a string`, `an integer`.
pub(super) fn a_type(value: &DeValue<'_>) -> String {
    let name = value.type_str();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// A string value.
fn string(label: &str, key: &str, value: &Spanned<DeValue<'_>>) -> Result<String, Problem> {
    value
        .get_ref()
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| wrong_type(label, key, "a string", value))
}

/// A string value that must be one of `words`.
fn word<'w>(
    label: &str,
    key: &str,
    value: &Spanned<DeValue<'_>>,
    words: &[&'w str],
) -> Result<&'w str, Problem> {
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    let wanted = quoted.join(" or ");
    let Some(text) = value.get_ref().as_str() else {
        return Err(wrong_type(label, key, &wanted, value));
    };
    words.iter().copied().find(|w| *w == text).ok_or_else(|| {
        Problem::at(
            value.span(),
            format!("{label}: {key} must be {wanted}, not {text:?}"),
        )
    })
}

/// An integer value from 0 to `u32::MAX` (zero is left to [`Pipeline::new`](crate::Pipeline::new),
/// which says why it is wrong for the key).
fn whole_number(label: &str, key: &str, value: &Spanned<DeValue<'_>>) -> Result<u32, Problem> {
    let Some(integer) = value.get_ref().as_integer() else {
        return Err(wrong_type(label, key, "a whole number", value));
    };
    i128::from_str_radix(integer.as_str(), integer.radix())
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            Problem::at(
                value.span(),
                format!(
                    "{label}: {key} must be a whole number from 1 to {}, not {integer}",
                    u32::MAX
                ),
            )
        })
}
