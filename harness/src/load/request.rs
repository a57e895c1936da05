//! The bytes of one request: an HTTP/1.1 request, or what the line and banner protocols send,
//! with the request's token wherever the scenario put `{token}`.

use std::fmt::Write as _;

use crate::model::{Exchange, Protocol};

/// Text with `{token}` places, split once so that each request only writes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Text {
    /// The text between the places (one more than there are places).
    parts: Vec<String>,
}

impl Text {
    fn new(s: &str) -> Text {
        Text {
            parts: s.split("{token}").map(str::to_string).collect(),
        }
    }

    fn write(&self, token: &str, out: &mut String) {
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push_str(token);
            }
            out.push_str(part);
        }
    }

    fn len(&self, token: &str) -> usize {
        self.parts.iter().map(String::len).sum::<usize>() + token.len() * (self.parts.len() - 1)
    }

    fn is_empty(&self) -> bool {
        self.parts.iter().all(String::is_empty)
    }
}

/// What every request of a load sends, with its token to fill in.
#[derive(Clone, Debug)]
pub struct Request {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// The line and banner protocols: these bytes (for a banner, possibly none).
    Send(Text),
    Http {
        method: String,
        path: Text,
        host: String,
        headers: Vec<(String, Text)>,
        body: Option<Text>,
    },
}

impl Request {
    /// The request of `protocol` under `exchange`; `default_host` is the `Host` header when the
    /// scenario names none (the address the load connects to).
    pub fn new(protocol: Protocol, exchange: &Exchange, default_host: &str) -> Request {
        let kind = match protocol {
            Protocol::Line => {
                Kind::Send(Text::new(exchange.send.as_deref().unwrap_or("{token}\n")))
            }
            Protocol::Banner => Kind::Send(Text::new(exchange.send.as_deref().unwrap_or(""))),
            Protocol::Http1 => {
                let http = &exchange.http;
                Kind::Http {
                    method: http.method.clone(),
                    path: Text::new(&http.path),
                    host: http
                        .host
                        .clone()
                        .unwrap_or_else(|| default_host.to_string()),
                    headers: http
                        .headers
                        .iter()
                        .map(|(name, value)| (name.clone(), Text::new(value)))
                        .collect(),
                    body: http.body.as_deref().map(Text::new),
                }
            }
        };
        Request { kind }
    }

    /// Whether there is nothing to send (a banner server is only listened to).
    pub fn is_empty(&self) -> bool {
        matches!(&self.kind, Kind::Send(t) if t.is_empty())
    }

    /// Whether the reply has no body, whatever its headers say (an HTTP `HEAD`).
    pub fn is_head(&self) -> bool {
        matches!(&self.kind, Kind::Http { method, .. } if method.eq_ignore_ascii_case("HEAD"))
    }

    /// Writes the request with `token` into `out` (cleared first).
    pub fn write(&self, token: &str, out: &mut String) {
        out.clear();
        match &self.kind {
            Kind::Send(text) => text.write(token, out),
            Kind::Http {
                method,
                path,
                host,
                headers,
                body,
            } => {
                let _ = write!(out, "{method} ");
                path.write(token, out);
                let _ = write!(out, " HTTP/1.1\r\nHost: {host}\r\n");
                if !headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
                {
                    out.push_str("User-Agent: handoff-harness\r\n");
                }
                for (name, value) in headers {
                    let _ = write!(out, "{name}: ");
                    value.write(token, out);
                    out.push_str("\r\n");
                }
                if let Some(body) = body {
                    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len(token));
                    body.write(token, out);
                } else {
                    out.push_str("\r\n");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HttpRequest;

    fn written(protocol: Protocol, exchange: &Exchange) -> String {
        let mut out = String::from("left over");
        Request::new(protocol, exchange, "127.0.0.1:9").write("c3-14", &mut out);
        out
    }

    #[test]
    fn the_defaults_are_the_requests_of_old() {
        let x = Exchange::default();
        assert_eq!(written(Protocol::Line, &x), "c3-14\n");
        assert_eq!(
            written(Protocol::Http1, &x),
            "GET /?c3-14 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUser-Agent: handoff-harness\r\n\r\n"
        );
        assert!(Request::new(Protocol::Banner, &x, "h").is_empty());
        assert!(!Request::new(Protocol::Line, &x, "h").is_empty());
    }

    #[test]
    fn an_http_request_is_what_the_scenario_says_with_the_token_in_place() {
        let x = Exchange {
            http: HttpRequest {
                method: "POST".into(),
                path: "/echo/{token}".into(),
                host: Some("app.test".into()),
                headers: vec![
                    ("X-Trace".into(), "t-{token}".into()),
                    ("User-Agent".into(), "probe".into()),
                ],
                body: Some("{token}={token}".into()),
            },
            ..Exchange::default()
        };
        assert_eq!(
            written(Protocol::Http1, &x),
            "POST /echo/c3-14 HTTP/1.1\r\nHost: app.test\r\nX-Trace: t-c3-14\r\nUser-Agent: probe\r\nContent-Length: 11\r\n\r\nc3-14=c3-14"
        );
        let mut head = x.clone();
        head.http.method = "HEAD".into();
        assert!(Request::new(Protocol::Http1, &head, "h").is_head());
        assert!(!Request::new(Protocol::Http1, &x, "h").is_head());
    }

    #[test]
    fn line_and_banner_send_what_the_scenario_says() {
        let x = Exchange {
            send: Some("PING {token}\r\n".into()),
            ..Exchange::default()
        };
        assert_eq!(written(Protocol::Line, &x), "PING c3-14\r\n");
        assert_eq!(written(Protocol::Banner, &x), "PING c3-14\r\n");
        assert_eq!(written(Protocol::Banner, &Exchange::default()), "");
    }
}
