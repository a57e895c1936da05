//! Validation of how the load talks to the target (`[load]`'s `send`, `reply-end`,
//! `reply-match`, `pid-header`, `pid-pattern` and `[load.http]`): each key only with a protocol
//! that uses it, every pattern compiled here with the load's own compiler, so that a pattern
//! the load would reject is an error that names its line.

use std::ops::Range;

use toml::Spanned;

use super::ScenarioError;
use super::raw::{RawHttp, RawLoad};
use super::validate::Validator;
use crate::load;
use crate::model::{Exchange, HttpRequest, Protocol, ReplyEnd};

impl Validator<'_> {
    pub(super) fn exchange(
        &self,
        raw: &RawLoad,
        protocol: Protocol,
    ) -> Result<Exchange, ScenarioError> {
        let only = |span: Option<Range<usize>>, key: &str, protocols: &[Protocol]| match span {
            Some(span) if !protocols.contains(&protocol) => {
                let names: Vec<String> = protocols
                    .iter()
                    .map(|p| format!("\"{}\"", p.name()))
                    .collect();
                Err(self.err(
                    span,
                    key,
                    format!(
                        "`{key}` applies to `load.protocol` {}, not \"{}\"",
                        names.join(" or "),
                        protocol.name()
                    ),
                ))
            }
            _ => Ok(()),
        };
        let text = [Protocol::Line, Protocol::Banner];
        only(raw.send.as_ref().map(|s| s.span()), "load.send", &text)?;
        only(
            raw.reply_end.as_ref().map(|s| s.span()),
            "load.reply-end",
            &text,
        )?;
        only(
            raw.pid_header.as_ref().map(|s| s.span()),
            "load.pid-header",
            &[Protocol::Http1],
        )?;
        only(
            raw.http.as_ref().map(|s| s.span()),
            "load.http",
            &[Protocol::Http1],
        )?;

        let send = raw.send.as_ref().map(|s| s.get_ref().clone());
        if let (Protocol::Line, Some(s)) = (protocol, &raw.send)
            && s.get_ref().is_empty()
        {
            return Err(self.err(
                s.span(),
                "load.send",
                "`load.send` is empty, but the line protocol sends a request: for a server that speaks first, use `load.protocol = \"banner\"`",
            ));
        }
        let reply_end = match &raw.reply_end {
            None => ReplyEnd::Line,
            Some(v) => self.reply_end(v)?,
        };
        let reply_match = match &raw.reply_match {
            None => None,
            Some(p) => {
                load::compile_reply_match(p.get_ref()).map_err(|why| {
                    self.err(
                        p.span(),
                        "load.reply-match",
                        format!("`load.reply-match`: {why}"),
                    )
                })?;
                Some(p.get_ref().clone())
            }
        };
        // The line protocol's default check looks for the request's token in the reply: a
        // request that does not carry it can never pass it.
        if protocol == Protocol::Line
            && reply_match.is_none()
            && let Some(s) = &raw.send
            && !s.get_ref().contains("{token}")
        {
            return Err(self.err(
                s.span(),
                "load.send",
                "`load.send` has no `{token}`, but by default a line reply must echo the request's token: put `{token}` in `send`, or say what a right reply is with `load.reply-match` (e.g. '^PONG')",
            ));
        }
        let pid_header = match &raw.pid_header {
            None => None,
            Some(h) => {
                if !is_token(h.get_ref()) {
                    return Err(self.err(
                        h.span(),
                        "load.pid-header",
                        format!(
                            "`load.pid-header` must be a header name such as \"X-PID\", got \"{}\"",
                            h.get_ref()
                        ),
                    ));
                }
                Some(h.get_ref().clone())
            }
        };
        let pid_pattern = match &raw.pid_pattern {
            None => None,
            Some(p) => {
                load::compile_pid_pattern(p.get_ref()).map_err(|why| {
                    self.err(
                        p.span(),
                        "load.pid-pattern",
                        format!("`load.pid-pattern` {why}"),
                    )
                })?;
                Some(p.get_ref().clone())
            }
        };
        let http = match &raw.http {
            None => HttpRequest::default(),
            Some(h) => self.http(h.get_ref())?,
        };
        Ok(Exchange {
            http,
            send,
            reply_end,
            reply_match,
            pid_header,
            pid_pattern,
        })
    }

    /// `reply-end`: `"line"` or `{ pattern = "..." }`.
    fn reply_end(&self, v: &Spanned<toml::Value>) -> Result<ReplyEnd, ScenarioError> {
        let field = "load.reply-end";
        let wrong = || {
            self.err(
                v.span(),
                field,
                format!(
                    "`{field}` must be \"line\" or {{ pattern = \"regex\" }} (the reply is complete once the regex matches), got {}",
                    v.get_ref()
                ),
            )
        };
        match v.get_ref() {
            toml::Value::String(s) if s == "line" => Ok(ReplyEnd::Line),
            toml::Value::Table(t) => {
                if let Some(k) = t.keys().find(|k| *k != "pattern") {
                    return Err(self.err(
                        v.span(),
                        field,
                        format!("unknown key `{k}` in `{field}`, expected only `pattern`"),
                    ));
                }
                match t.get("pattern") {
                    Some(toml::Value::String(p)) => {
                        load::compile_reply_end(p).map_err(|why| {
                            self.err(v.span(), field, format!("`{field}.pattern`: {why}"))
                        })?;
                        Ok(ReplyEnd::Pattern(p.clone()))
                    }
                    _ => Err(wrong()),
                }
            }
            _ => Err(wrong()),
        }
    }

    /// `[load.http]`: the request line and headers; `{token}` may stand anywhere.
    fn http(&self, raw: &RawHttp) -> Result<HttpRequest, ScenarioError> {
        let mut http = HttpRequest::default();
        if let Some(m) = &raw.method {
            if !is_token(m.get_ref()) {
                return Err(self.err(
                    m.span(),
                    "load.http.method",
                    format!(
                        "`load.http.method` must be a method such as \"GET\", \"HEAD\" or \"POST\", got \"{}\"",
                        m.get_ref()
                    ),
                ));
            }
            http.method = m.get_ref().clone();
        } else if raw.body.is_some() {
            http.method = "POST".to_string();
        }
        if let Some(p) = &raw.path {
            let path = p.get_ref();
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.err(
                    p.span(),
                    "load.http.path",
                    format!(
                        "`load.http.path` must start with `/` and hold no space or control character (percent-encode them), e.g. \"/healthz\" or \"/?{{token}}\", got \"{path}\""
                    ),
                ));
            }
            http.path = path.clone();
        }
        if let Some(h) = &raw.host {
            let host = h.get_ref();
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.err(
                    h.span(),
                    "load.http.host",
                    format!(
                        "`load.http.host` must be a host such as \"app.example\" or \"localhost:8080\", got \"{host}\""
                    ),
                ));
            }
            http.host = Some(host.clone());
        }
        if let Some(headers) = &raw.headers {
            for (name, value) in headers.get_ref() {
                let field = format!("load.http.headers.{name}");
                let err = |why: String| self.err(headers.span(), &field, why);
                if !is_token(name) {
                    return Err(err(format!("`{name}` is not a header name")));
                }
                if ["host", "content-length", "transfer-encoding"]
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h))
                {
                    return Err(err(format!(
                        "`{name}` is set by the load: use `load.http.host` for the host, `load.http.body` for a body (sent with its Content-Length)"
                    )));
                }
                let toml::Value::String(value) = value else {
                    return Err(err(format!("`{field}` must be a string, got {value}")));
                };
                if value.contains(['\r', '\n']) {
                    return Err(err(format!("`{field}` must be one line")));
                }
                http.headers.push((name.clone(), value.clone()));
            }
        }
        http.body = raw.body.as_ref().map(|b| b.get_ref().clone());
        Ok(http)
    }
}

/// An HTTP token (RFC 9110 section 5.6.2): a method or a header name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
