//! The OpenAPI document the server serves at `/openapi.json` and shows at
//! `/docs`: poem-openapi's document, finished with what poem-openapi cannot
//! say by itself, and the table of the methods each path serves that the
//! `Allow` header of a 405 answer is made from.
//!
//! What [`Document::from_spec`] changes in poem-openapi's document:
//!
//! - **Plain references.** poem-openapi writes a documented field whose type
//!   is an enum or an object as `allOf` of the `$ref` and a schema holding
//!   only the field's description (and `nullable`). Client generators cannot
//!   take `allOf` of an enum (openapi-python-client drops every model with
//!   such a field, and with it the typed answers of the operations). Such a
//!   field becomes the plain `$ref`, its description kept beside it (where
//!   OpenAPI 3.0 tools ignore it and people still read it); a nullable one
//!   becomes `oneOf` of the one `$ref`, `nullable`.
//! - **Event streams.** poem-openapi describes a `text/event-stream` answer
//!   as an array of its items; a client sees events. Such an answer's schema
//!   becomes [`ServerSentEvent`]: one event as an SSE client reads it, whose
//!   `data` is JSON text described by `contentMediaType` and `contentSchema`
//!   ([`EventData`]), as OpenAPI 3.2 describes event streams. OpenAPI 3.0
//!   tools that do not know these two keywords ignore them; schema-driven
//!   testers such as schemathesis check the data with them.
//! - **Patterns.** The parameters [`super::params`] checks by hand get the
//!   `pattern` their check tests.
//! - **Links.** How an answer leads to the next request ([`LINKS`]): from a
//!   page of runs to a run, from a run to its steps' logs. Swagger UI shows
//!   them; schemathesis follows them to test with runs that exist.

use std::collections::BTreeSet;

use poem::http::Method;
use poem_openapi::registry::Registry;
use serde_json::{Map, Value, json};

use super::events::schema::{EventData, ServerSentEvent};

/// A link of the document: the answer `status` of operation `from` gives
/// the `parameters` (name, runtime expression) of operation `to`.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// The operation whose answer it is (`operationId`).
    pub from: &'static str,
    /// The status of that answer.
    pub status: &'static str,
    /// The link's name.
    pub name: &'static str,
    /// The operation it leads to (`operationId`).
    pub to: &'static str,
    /// That operation's parameters, each from the answer (an OpenAPI
    /// runtime expression).
    pub parameters: &'static [(&'static str, &'static str)],
    /// What it is, in words.
    pub description: &'static str,
}

/// The links between the operations of the API.
pub const LINKS: [Link; 4] = [
    Link {
        from: "list_runs",
        status: "200",
        name: "GetRun",
        to: "get_run",
        parameters: &[("commit", "$response.body#/data/0/id")],
        description: "The first run of the page in full; every `data[i].id` is a `commit`.",
    },
    Link {
        from: "get_run",
        status: "200",
        name: "GetStepLog",
        to: "get_step_log",
        parameters: &[
            ("commit", "$response.body#/id"),
            ("step", "$response.body#/steps/0/name"),
        ],
        description: "The logs of the run's first step; every `steps[i].name` is a `step` \
                      (`steps[i].log_url` is the same request).",
    },
    Link {
        from: "get_run",
        status: "200",
        name: "RetryRun",
        to: "retry_run",
        parameters: &[("commit", "$response.body#/id")],
        description: "Retry the run, once it has finished other than in success.",
    },
    Link {
        from: "get_run",
        status: "200",
        name: "CancelRun",
        to: "cancel_run",
        parameters: &[("commit", "$response.body#/id")],
        description: "Cancel the run, while it is queued or running.",
    },
];

/// The media type of an event stream.
const EVENT_STREAM: &str = "text/event-stream";

/// The order in which `Allow` lists methods.
const METHOD_ORDER: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
];

/// The document as served, and the routes it describes.
#[derive(Clone, Debug)]
pub struct Document {
    json: String,
    routes: Routes,
}

impl Document {
    /// Finishes poem-openapi's document `spec` (see the module
    /// documentation) and reads its routes.
    ///
    /// # Errors
    /// When `spec` is not a JSON object (poem-openapi writes one).
    pub fn from_spec(spec: &str) -> Result<Self, serde_json::Error> {
        let mut doc: Value = serde_json::from_str(spec)?;
        describe_event_streams(&mut doc)?;
        plain_references(&mut doc);
        state_patterns(&mut doc);
        add_links(&mut doc, &LINKS);
        let routes = Routes::from_document(&doc);
        let json = serde_json::to_string_pretty(&doc)?;
        Ok(Self { json, routes })
    }

    /// The document as JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The paths of the document and their methods.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }
}

/// Registers `T` and what it uses in a fresh registry and adds every schema
/// the document does not have yet to `schemas`.
fn add_schemas<T: poem_openapi::types::Type>(
    schemas: &mut Map<String, Value>,
) -> Result<(), serde_json::Error> {
    let mut registry = Registry::new();
    T::register(&mut registry);
    for (name, schema) in registry.schemas {
        if !schemas.contains_key(&name) {
            schemas.insert(name, serde_json::to_value(&schema)?);
        }
    }
    Ok(())
}

/// Describes every `text/event-stream` answer as a stream of
/// [`ServerSentEvent`]s whose data is an [`EventData`].
fn describe_event_streams(doc: &mut Value) -> Result<(), serde_json::Error> {
    let mut any_stream = false;
    let operations = doc
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let responses = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|r| r.values_mut());
        for response in responses {
            if let Some(media) = response
                .get_mut("content")
                .and_then(|c| c.get_mut(EVENT_STREAM))
                .and_then(Value::as_object_mut)
            {
                any_stream = true;
                media.insert(
                    "schema".to_owned(),
                    reference(schema_name::<ServerSentEvent>()),
                );
            }
        }
    }
    if !any_stream {
        return Ok(());
    }
    let Some(schemas) = schemas_mut(doc) else {
        return Ok(());
    };
    add_schemas::<ServerSentEvent>(schemas)?;
    add_schemas::<EventData>(schemas)?;
    if let Some(data) = schemas
        .get_mut(&schema_name::<ServerSentEvent>())
        .and_then(|s| s.get_mut("properties"))
        .and_then(|p| p.get_mut("data"))
        .and_then(Value::as_object_mut)
    {
        data.insert("contentMediaType".to_owned(), json!("application/json"));
        data.insert(
            "contentSchema".to_owned(),
            reference(schema_name::<EventData>()),
        );
    }
    Ok(())
}

/// The document's `components.schemas`, made when missing; `None` when the
/// document is not an object.
fn schemas_mut(doc: &mut Value) -> Option<&mut Map<String, Value>> {
    doc.as_object_mut()?
        .entry("components")
        .or_insert_with(|| json!({}))
        .as_object_mut()?
        .entry("schemas")
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

/// Adds `links` to the answers they start from, each when both of its
/// operations are in `doc`.
fn add_links(doc: &mut Value, links: &[Link]) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let ids: BTreeSet<String> = paths
        .values()
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
        .filter_map(|op| op.get("operationId").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let Some(id) = operation.get("operationId").and_then(Value::as_str) else {
            continue;
        };
        let id = id.to_owned();
        for link in links.iter().filter(|l| l.from == id && ids.contains(l.to)) {
            let Some(response) = operation
                .get_mut("responses")
                .and_then(|r| r.get_mut(link.status))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let parameters: Map<String, Value> = link
                .parameters
                .iter()
                .map(|(name, expression)| ((*name).to_owned(), json!(expression)))
                .collect();
            let entry = response.entry("links").or_insert_with(|| json!({}));
            if let Some(entry) = entry.as_object_mut() {
                entry.insert(
                    link.name.to_owned(),
                    json!({
                        "operationId": link.to,
                        "parameters": parameters,
                        "description": link.description,
                    }),
                );
            }
        }
    }
}

/// The name of `T`'s schema. (The trait is not imported: its `is_empty`
/// would stand in for `str::is_empty` on `&&str`.)
fn schema_name<T: poem_openapi::types::Type>() -> String {
    T::name().into_owned()
}

/// `{"$ref": "#/components/schemas/NAME"}`.
fn reference(name: impl AsRef<str>) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", name.as_ref()) })
}

/// Writes the pattern of each parameter that [`super::params`] checks by
/// hand into its schema, where a `pattern` validator would have put it.
fn state_patterns(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let parameters = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|operations| operations.values_mut())
        .filter_map(|operation| operation.get_mut("parameters"))
        .filter_map(Value::as_array_mut)
        .flatten();
    for parameter in parameters {
        let name = parameter.get("name").and_then(Value::as_str).unwrap_or("");
        let Some((_, matches)) = super::params::PATTERNS.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        if let Some(schema) = parameter.get_mut("schema").and_then(Value::as_object_mut) {
            schema.insert("pattern".to_owned(), Value::from(matches.pattern));
        }
    }
}

/// Replaces every `allOf` of one `$ref` and a bare annotation (see the module
/// documentation), anywhere in `value`.
fn plain_references(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(plain) = plain_reference(object) {
                *object = plain;
            }
            for child in object.values_mut() {
                plain_references(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(plain_references),
        _ => {}
    }
}

/// The keys a bare annotation of a reference may have.
const ANNOTATIONS: [&str; 2] = ["description", "nullable"];

/// `schema` without its `allOf`, if it is `allOf` of one `$ref` and a bare
/// annotation, with nothing else than annotations beside.
fn plain_reference(schema: &Map<String, Value>) -> Option<Map<String, Value>> {
    let all_of = schema.get("allOf")?.as_array()?;
    let [target, annotation] = all_of.as_slice() else {
        return None;
    };
    let target = target.as_object()?;
    if target.len() != 1 || !target.contains_key("$ref") {
        return None;
    }
    let bare = |map: &Map<String, Value>, also: &[&str]| {
        map.keys()
            .all(|k| ANNOTATIONS.contains(&k.as_str()) || also.contains(&k.as_str()))
    };
    if !bare(annotation.as_object()?, &[]) || !bare(schema, &["allOf"]) {
        return None;
    }
    let mut plain = Map::new();
    if let Some(description) = schema.get("description") {
        plain.insert("description".to_owned(), description.clone());
    }
    if schema.get("nullable") == Some(&Value::Bool(true)) {
        plain.insert("nullable".to_owned(), Value::Bool(true));
        plain.insert(
            "oneOf".to_owned(),
            Value::Array(vec![Value::Object(target.clone())]),
        );
    } else {
        plain.extend(target.clone());
    }
    Some(plain)
}

/// One segment of a path template: a literal, or a parameter (`{name}`) that
/// matches any non-empty segment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// The paths the server serves and the methods of each: those of the
/// document, and any added with [`with_get`](Self::with_get).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<(Vec<Segment>, BTreeSet<usize>)>,
}

impl Routes {
    /// The paths of an OpenAPI document (`paths`, with `{name}` parameters)
    /// and the methods each one lists.
    pub fn from_document(doc: &Value) -> Self {
        let mut routes = Self::default();
        if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
            for (path, item) in paths {
                let methods: Vec<Method> = item
                    .as_object()
                    .into_iter()
                    .flat_map(|ops| ops.keys())
                    .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                    .collect();
                routes.add(path, &methods);
            }
        }
        routes
    }

    /// Adds `paths` (templates such as `/commit/{commit}`), served with GET
    /// only: routes that are not part of the document.
    #[must_use]
    pub fn with_get(mut self, paths: &[&str]) -> Self {
        for path in paths {
            self.add(path, &[Method::GET]);
        }
        self
    }

    fn add(&mut self, template: &str, methods: &[Method]) {
        let segments = template
            .split('/')
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_owned())
                }
            })
            .collect();
        let indices = methods
            .iter()
            .filter_map(|m| METHOD_ORDER.iter().position(|o| o == m))
            .collect();
        self.routes.push((segments, indices));
    }

    /// The methods `path` (a request's path) is served with, for an `Allow`
    /// header: those of every template it matches, `HEAD` with `GET`, in a
    /// fixed order. `None` when no template matches.
    pub fn allow(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        let mut methods = BTreeSet::new();
        let mut matched = false;
        for (template, indices) in &self.routes {
            let fits = template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| match t {
                    Segment::Literal(l) => l == s,
                    Segment::Param => !s.is_empty(),
                });
            if fits {
                matched = true;
                methods.extend(indices.iter().copied());
            }
        }
        if !matched {
            return None;
        }
        if methods.contains(&0) {
            // poem answers HEAD for every GET route.
            methods.insert(1);
        }
        let names: Vec<&str> = methods.iter().map(|&i| METHOD_ORDER[i].as_str()).collect();
        Some(names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_reference_becomes_plain() {
        let mut doc = json!({
            "status": {
                "description": "The run's status.",
                "allOf": [
                    { "$ref": "#/components/schemas/RunStatus" },
                    { "description": "The run's status." }
                ]
            },
            "need_status": {
                "description": "Its status.",
                "nullable": true,
                "allOf": [
                    { "$ref": "#/components/schemas/StepStatus" },
                    { "description": "Its status.", "nullable": true }
                ]
            },
            "kept": {
                "allOf": [
                    { "$ref": "#/components/schemas/A" },
                    { "type": "object", "properties": { "x": { "type": "string" } } }
                ]
            }
        });
        let kept = doc["kept"].clone();
        plain_references(&mut doc);
        assert_eq!(
            doc["status"],
            json!({
                "$ref": "#/components/schemas/RunStatus",
                "description": "The run's status."
            })
        );
        assert_eq!(
            doc["need_status"],
            json!({
                "description": "Its status.",
                "nullable": true,
                "oneOf": [{ "$ref": "#/components/schemas/StepStatus" }]
            })
        );
        assert_eq!(doc["kept"], kept, "a real allOf stays");
    }

    #[test]
    fn allow_lists_the_methods_of_the_matching_templates() {
        let doc = json!({
            "paths": {
                "/runs": { "get": {} },
                "/run/{commit}": { "get": {} },
                "/run/{commit}/retry": { "post": {} },
                "/things/{id}": { "put": {}, "delete": {} }
            }
        });
        let routes = Routes::from_document(&doc).with_get(&["/", "/commit/{commit}"]);
        assert_eq!(routes.allow("/runs").as_deref(), Some("GET, HEAD"));
        assert_eq!(routes.allow("/run/abcd").as_deref(), Some("GET, HEAD"));
        assert_eq!(routes.allow("/run/abcd/retry").as_deref(), Some("POST"));
        assert_eq!(routes.allow("/things/1").as_deref(), Some("PUT, DELETE"));
        assert_eq!(routes.allow("/").as_deref(), Some("GET, HEAD"));
        assert_eq!(routes.allow("/commit/abcd").as_deref(), Some("GET, HEAD"));
        assert_eq!(routes.allow("/run/"), None, "an empty parameter");
        assert_eq!(routes.allow("/nothing"), None);
        assert_eq!(routes.allow("/runs/x"), None);
    }
}
