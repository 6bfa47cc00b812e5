//! Every answer a test gateway gives the tests' HTTP client, checked against the OpenAPI document the
//! gateway serves: the route (path template and method), the status, the content type, and for JSON
//! the body against the response's schema (JSON Schema 2020-12, `$ref`s resolved in the document,
//! formats such as `date-time` checked). [`TestApp::client`](crate::helpers::TestApp) carries the
//! check as a middleware, so every test that talks through it checks the document for free; a failure
//! names the method, the path template, the status and the JSON path that did not fit.
//!
//! Objects are closed for the check (`additionalProperties: false` where the document says nothing):
//! a field the server sends must be in the document.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use aio_gateway::http::openapi::ApiDoc;
use axum::http::Extensions;
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use serde_json::{json, Value};
use utoipa::OpenApi;

/// Paths the document leaves out on purpose: the console's page and assets, and OpenAI's routes
/// (OpenAI's contract and error shape, docs/openai.md).
const UNDOCUMENTED: [&str; 2] = ["/console", "/v1/"];

/// `client` with the check on every answer from `base` (`http://127.0.0.1:{port}`).
pub fn checked(client: reqwest::Client, base: &str) -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(client).with(Contract { base: base.to_owned() }).build()
}

struct Contract {
    base: String,
}

#[async_trait::async_trait]
impl Middleware for Contract {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let method = request.method().as_str().to_lowercase();
        let url = request.url().clone();
        let response = next.run(request, extensions).await?;
        if !url.as_str().starts_with(&self.base) {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
        // A stream is checked for its route, status and type only: reading it would wait for its end.
        let streaming = content_type.as_deref() == Some("text/event-stream");
        if method == "head" || streaming {
            let method = if method == "head" { "get" } else { method.as_str() };
            DOCUMENT.check(method, url.path(), status, content_type.as_deref(), None).unwrap_or_else(|e| panic!("{e}"));
            return Ok(response);
        }
        let (parts, body) = axum::http::Response::<reqwest::Body>::from(response).into_parts();
        let bytes = Response::from(axum::http::Response::new(body)).bytes().await?;
        DOCUMENT
            .check(&method, url.path(), status, content_type.as_deref(), Some(&bytes))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut rebuilt = axum::http::Response::builder().status(parts.status).version(parts.version).url(url);
        if let Some(headers) = rebuilt.headers_mut() {
            *headers = parts.headers;
        }
        Ok(Response::from(rebuilt.body(bytes).expect("rebuild the answer")))
    }
}

/// [`DOCUMENT`]'s check of one answer, for the check's own tests.
pub fn check(method: &str, path: &str, status: u16, content_type: Option<&str>, body: &[u8]) -> Result<(), String> {
    DOCUMENT.check(method, path, status, content_type, Some(body))
}

static DOCUMENT: LazyLock<Document> = LazyLock::new(|| {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document as JSON");
    close_objects(&mut doc);
    reopen_composed_components(&mut doc);
    Document { doc, validators: Mutex::default() }
});

struct Document {
    /// The served document, objects closed.
    doc: Value,
    /// By JSON pointer of the schema.
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Document {
    /// Whether the answer fits the document; `Err` says where it does not.
    fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(), String> {
        if path == "/" || UNDOCUMENTED.iter().any(|prefix| path.starts_with(prefix)) {
            return Ok(());
        }
        let shown = |template: &str| {
            format!("OpenAPI: {} {template} (requested {path}) answered {status}", method.to_uppercase())
        };
        let Some(template) = self.template(path) else {
            // The router's fallback: any unknown path is a 404 (or 405) with the envelope.
            return match status {
                404 | 405 => self.body_fits("/components/schemas/ErrorEnvelope", &shown(path), content_type, body),
                _ => Err(format!("{}: no path of the document matches", shown(path))),
            };
        };
        let what = shown(&template);
        let operation = &self.doc["paths"][&template][method];
        if !operation.is_object() {
            return match status {
                405 => self.body_fits("/components/schemas/ErrorEnvelope", &what, content_type, body),
                _ => Err(format!("{what}: the document has no {} operation on this path", method.to_uppercase())),
            };
        }
        let responses = &operation["responses"];
        let key = status.to_string();
        let (key, response) = match (responses.get(&key), responses.get("default")) {
            (Some(response), _) => (key, response),
            (None, Some(response)) => ("default".to_owned(), response),
            (None, None) => {
                let declared: Vec<&String> = responses.as_object().map(|r| r.keys().collect()).unwrap_or_default();
                return Err(format!("{what}: status {status} is not declared (declared: {declared:?})"));
            }
        };
        let response = self.resolve(response);
        let Some(content) = response["content"].as_object().filter(|c| !c.is_empty()) else {
            return match body.is_none_or(|b| b.is_empty()) {
                true => Ok(()),
                false => Err(format!("{what}: the document declares no body, the answer has one ({content_type:?})")),
            };
        };
        let Some(content_type) = content_type else {
            return Err(format!(
                "{what}: no Content-Type; the document declares {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if !content.contains_key(content_type) {
            return Err(format!(
                "{what}: Content-Type {content_type} is not declared (declared: {:?})",
                content.keys().collect::<Vec<_>>()
            ));
        }
        if content_type != "application/json" || body.is_none() {
            return Ok(());
        }
        let pointer = format!(
            "/paths/{}/{method}/responses/{key}/content/application~1json/schema",
            template.replace('~', "~0").replace('/', "~1")
        );
        self.body_fits(&pointer, &format!("{what} {content_type}"), Some(content_type), body)
    }

    /// The document's path template `path` matches; literal segments win over parameters.
    fn template(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        paths
            .keys()
            .filter_map(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') && part.ends_with('}') {
                        if segment.is_empty() {
                            return None;
                        }
                    } else if part == segment {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, template))
            })
            .max_by_key(|(literal, _)| *literal)
            .map(|(_, template)| template.clone())
    }

    /// A response object, or the one its `$ref` names.
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => self.doc.pointer(pointer).unwrap_or(value),
            None => value,
        }
    }

    /// Whether `body` is JSON that fits the schema at `pointer` in the document.
    fn body_fits(
        &self,
        pointer: &str,
        what: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(), String> {
        let Some(body) = body else { return Ok(()) };
        if content_type != Some("application/json") {
            return Err(format!("{what}: Content-Type {content_type:?}, the document declares application/json"));
        }
        let text = String::from_utf8_lossy(body);
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("{what}: the body is not JSON ({e}): {text:.2000}"))?;
        let validator = self.validator(pointer);
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .take(5)
            .map(|error| {
                format!("at `{}`: {error} (schema {})", error.instance_path.as_str(), error.schema_path.as_str())
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: the body does not fit the document\n  {}\n  body: {text:.2000}", errors.join("\n  ")))
        }
    }

    fn validator(&self, pointer: &str) -> Arc<jsonschema::Validator> {
        let validators = || self.validators.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(validator) = validators().get(pointer) {
            return Arc::clone(validator);
        }
        // The document is the schema's root, so `#/components/schemas/…` resolves as it is written; a
        // fragment is a URI, so the braces of path templates are percent-encoded.
        let mut root = self.doc.clone();
        root["$ref"] = json!(format!("#{}", pointer.replace('{', "%7B").replace('}', "%7D")));
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("OpenAPI: the schema at {pointer} does not compile: {e}"));
        Arc::clone(validators().entry(pointer.to_owned()).or_insert(Arc::new(validator)))
    }
}

/// A component that is a member of an `allOf` (a `#[serde(flatten)]`ed struct, e.g. the limits inside a
/// key) only holds part of the object: closing it would refuse the fields of its siblings, so it stays
/// open (the fields it does declare are still checked).
fn reopen_composed_components(doc: &mut Value) {
    fn members(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Array(all)) = map.get("allOf") {
                    let refs = all.iter().filter_map(|m| m.get("$ref").and_then(Value::as_str));
                    found.extend(refs.filter_map(|r| r.strip_prefix("#/components/schemas/")).map(str::to_owned));
                }
                map.values().for_each(|child| members(child, found));
            }
            Value::Array(items) => items.iter().for_each(|child| members(child, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    members(doc, &mut found);
    for name in found {
        if let Some(Value::Object(schema)) = doc.pointer_mut(&format!("/components/schemas/{name}")) {
            schema.remove("additionalProperties");
        }
    }
}

/// Sets `additionalProperties: false` on every object schema with `properties` that says nothing about
/// other properties, except inside `allOf`/`anyOf`/`oneOf` (where the sibling schemas add properties).
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, child) in map.iter_mut() {
                if matches!(key.as_str(), "allOf" | "anyOf" | "oneOf") {
                    // The members themselves stay open; what they hold is closed as usual.
                    if let Value::Array(members) = child {
                        for member in members {
                            if let Value::Object(member) = member {
                                for (_, grandchild) in member.iter_mut() {
                                    close_objects(grandchild);
                                }
                            }
                        }
                    }
                } else {
                    close_objects(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}
