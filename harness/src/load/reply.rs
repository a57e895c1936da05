//! The reply parsers: a line-protocol reply, a banner and an HTTP/1.x response, each to a
//! [`Reply`] (the pid it names, whether the server closes after it) and the bytes it used,
//! under the [`Rules`] a scenario's `[load]` gives: when a reply is complete, what it must
//! say, and where it names its pid.

use std::fmt::Write as _;

use regex::bytes::{Captures, Regex};

use crate::model::{Exchange, Protocol, ReplyEnd};

/// Longest reply head or line accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest HTTP body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// What `{token}` in a `reply-match` pattern matches: a token as the load writes it,
/// `c<client>-<n>`, captured and compared with the request's own (so `c1-1` never passes for
/// `c1-10`, nor for another request's token).
const TOKEN_SHAPE: &str = "c[0-9]+-[0-9]+";
/// The names of the groups `{token}` becomes.
const TOKEN_GROUP: &str = "handoff_token";
/// The header that names the serving pid when the scenario names none.
pub const DEFAULT_PID_HEADER: &str = "X-Handoff-Pid";

/// A complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The pid the reply named, if it named one.
    pub pid: Option<u32>,
    /// The server announced it closes the connection after this reply.
    pub close: bool,
}

/// The compiled adapter of one load: how its replies are framed, checked and attributed.
#[derive(Clone, Debug)]
pub struct Rules {
    protocol: Protocol,
    /// Line and banner: when a reply is complete.
    end: End,
    check: Check,
    pid_header: String,
    /// `None`: a `pid=<n>` word.
    pid_pattern: Option<Regex>,
}

#[derive(Clone, Debug)]
enum End {
    Line,
    Pattern(Regex),
}

#[derive(Clone, Debug)]
enum Check {
    /// The token as a whitespace-separated word (the line protocol's default).
    TokenWord,
    /// The reply matches, with every `{token}` group equal to the request's token.
    Pattern {
        re: Regex,
        source: String,
        tokens: usize,
    },
    Anything,
}

impl Rules {
    /// The rules of `protocol` with `exchange`'s settings.
    ///
    /// # Errors
    /// A pattern that does not compile or does not fit its use, with the reason (the scenario
    /// validation has already said so, field by field, for a scenario read from a file).
    pub fn new(protocol: Protocol, exchange: &Exchange) -> Result<Rules, String> {
        let end = match &exchange.reply_end {
            ReplyEnd::Line => End::Line,
            ReplyEnd::Pattern(p) => End::Pattern(compile_reply_end(p)?),
        };
        let check = match (&exchange.reply_match, protocol) {
            (Some(p), _) => {
                let (re, tokens) = compile_reply_match(p)?;
                Check::Pattern {
                    re,
                    source: p.clone(),
                    tokens,
                }
            }
            (None, Protocol::Line) => Check::TokenWord,
            (None, Protocol::Http1 | Protocol::Banner) => Check::Anything,
        };
        Ok(Rules {
            protocol,
            end,
            check,
            pid_header: exchange
                .pid_header
                .clone()
                .unwrap_or_else(|| DEFAULT_PID_HEADER.to_string()),
            pid_pattern: exchange
                .pid_pattern
                .as_deref()
                .map(compile_pid_pattern)
                .transpose()?,
        })
    }

    /// The protocol's defaults: what a scenario that says nothing more gets.
    pub fn default_for(protocol: Protocol) -> Rules {
        // The default exchange has no pattern, so nothing can fail to compile.
        Rules::new(protocol, &Exchange::default()).expect("the default rules compile")
    }

    /// Parses one reply at the start of `buf` (`eof`: nothing more will come; `head`: it
    /// answers an HTTP `HEAD`, which has no body). Returns the reply and the bytes it used, or
    /// `None` while it is not complete.
    ///
    /// # Errors
    /// A reply that is complete (or can no longer become so) and wrong: the detail of a bad
    /// reply.
    pub fn parse(
        &self,
        buf: &[u8],
        eof: bool,
        head: bool,
        token: &str,
    ) -> Result<Option<(Reply, usize)>, String> {
        match self.protocol {
            Protocol::Http1 => parse_http_reply(buf, eof, head, token, self),
            Protocol::Line | Protocol::Banner => self.parse_text(buf, token),
        }
    }

    /// A line reply or a banner: up to the first newline, or the end of the `reply-end` match.
    fn parse_text(&self, buf: &[u8], token: &str) -> Result<Option<(Reply, usize)>, String> {
        let (text, used) = match &self.end {
            End::Line => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_HEAD {
                        return Err(format!("reply line longer than {MAX_HEAD} bytes"));
                    }
                    return Ok(None);
                };
                let line = &buf[..end];
                (line.strip_suffix(b"\r").unwrap_or(line), end + 1)
            }
            End::Pattern(re) => {
                let Some(m) = re.find(buf) else {
                    if buf.len() > MAX_HEAD {
                        return Err(format!(
                            "no match of `reply-end` `{}` within {MAX_HEAD} bytes: `{}`",
                            re.as_str(),
                            clip(&String::from_utf8_lossy(buf))
                        ));
                    }
                    return Ok(None);
                };
                (&buf[..m.end()], m.end())
            }
        };
        self.check(text, token)?;
        let close = match self.protocol {
            // A server may announce that it closes the connection after this reply (the
            // reference servers say `conn=close` while draining); then the client does not
            // reuse it, rather than race the FIN.
            Protocol::Line => String::from_utf8_lossy(text)
                .split_whitespace()
                .any(|w| w == "conn=close"),
            Protocol::Banner | Protocol::Http1 => true,
        };
        Ok(Some((
            Reply {
                pid: self.pid_in(text),
                close,
            },
            used,
        )))
    }

    /// Whether a complete reply (an HTTP body) says what it must.
    fn check(&self, text: &[u8], token: &str) -> Result<(), String> {
        match &self.check {
            Check::Anything => Ok(()),
            Check::TokenWord => {
                let line = String::from_utf8_lossy(text);
                if line.split_whitespace().any(|w| w == token) {
                    Ok(())
                } else {
                    Err(format!("reply `{}` does not echo `{token}`", clip(&line)))
                }
            }
            Check::Pattern { re, source, tokens } => {
                let ours = |c: &Captures| {
                    (0..*tokens).all(|i| {
                        c.name(&format!("{TOKEN_GROUP}{i}"))
                            .is_some_and(|m| m.as_bytes() == token.as_bytes())
                    })
                };
                if re.captures_iter(text).any(|c| ours(&c)) {
                    Ok(())
                } else {
                    Err(format!(
                        "reply `{}` does not match `reply-match` `{}`",
                        clip(&String::from_utf8_lossy(text)),
                        source.replace("{token}", token)
                    ))
                }
            }
        }
    }

    /// The pid a reply's text (an HTTP body) names: by `pid-pattern`, or a `pid=<n>` word.
    fn pid_in(&self, text: &[u8]) -> Option<u32> {
        match &self.pid_pattern {
            Some(re) => re
                .captures(text)
                .and_then(|c| c.get(1))
                .and_then(|m| std::str::from_utf8(m.as_bytes()).ok()?.trim().parse().ok()),
            None => pid_in_text(&String::from_utf8_lossy(text)),
        }
    }

    /// The pid named by a partial reply, for the record of a failed connection: the pid
    /// header of an HTTP head received, else the reply's text.
    pub fn partial_pid(&self, buf: &[u8]) -> Option<u32> {
        let text = String::from_utf8_lossy(buf);
        let by_header = (self.protocol == Protocol::Http1)
            .then(|| {
                text.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case(&self.pid_header)
                        .then(|| value.trim().parse().ok())?
                })
            })
            .flatten();
        by_header.or_else(|| self.pid_in(buf))
    }
}

/// Compiles a `pid-pattern`: a regex with exactly one capture group, around the pid.
///
/// # Errors
/// It does not compile, or has no or several capture groups.
pub fn compile_pid_pattern(source: &str) -> Result<Regex, String> {
    let re = compile(source)?;
    match re.captures_len() - 1 {
        1 => Ok(re),
        n => Err(format!(
            "must have exactly one capture group, around the pid (e.g. 'pid[:=](\\d+)'); `{source}` has {n}"
        )),
    }
}

/// Compiles a `reply-end` pattern.
///
/// # Errors
/// It does not compile, or matches an empty reply (it would end every reply before its first
/// byte).
pub fn compile_reply_end(source: &str) -> Result<Regex, String> {
    let re = compile(source)?;
    if re.is_match(b"") {
        return Err(format!(
            "`{source}` matches an empty reply, so every reply would end before its first byte: end it with what closes a reply, e.g. '\\n' or 'END\\r?\\n'"
        ));
    }
    Ok(re)
}

/// Compiles a `reply-match` pattern, each `{token}` made a group that captures a token; the
/// regex and how many `{token}` it has.
///
/// # Errors
/// It does not compile.
pub fn compile_reply_match(source: &str) -> Result<(Regex, usize), String> {
    let mut re = String::with_capacity(source.len() + 32);
    let mut tokens = 0;
    for (i, part) in source.split("{token}").enumerate() {
        if i > 0 {
            let _ = write!(re, "(?P<{TOKEN_GROUP}{}>{TOKEN_SHAPE})", i - 1);
            tokens = i;
        }
        re.push_str(part);
    }
    // The error shows the pattern as written, not with the groups `{token}` became.
    let compiled = compile(&re).map_err(|e| e.replace(&re, source))?;
    Ok((compiled, tokens))
}

/// A regex over the reply's bytes, its error in one line.
fn compile(source: &str) -> Result<Regex, String> {
    Regex::new(source).map_err(|e| {
        let text = e.to_string();
        let why = text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error:"))
            .map_or_else(|| text.replace('\n', " "), |w| w.trim().to_string());
        format!("`{source}` is not a valid regex: {why}")
    })
}

/// Header slots for a response head (and for a trailer section); more is a bad reply.
const MAX_HEADERS: usize = 100;

/// Parses an HTTP/1.x response (with `httparse`): status 200, headers, and a body delimited
/// by `Content-Length`, chunked encoding (chunk sizes read one by one, extensions skipped, a
/// trailer section allowed), or (with `eof`) the end of the connection; none after a `HEAD`.
/// The body must pass the `reply-match` of `rules`; the pid comes from the pid header of
/// `rules`, else from the body.
fn parse_http_reply(
    buf: &[u8],
    eof: bool,
    head: bool,
    token: &str,
    rules: &Rules,
) -> Result<Option<(Reply, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let status_line = || {
        let end = find(buf, b"\r\n").unwrap_or(buf.len());
        clip(&String::from_utf8_lossy(&buf[..end]))
    };
    let head_end = match lenient().parse_response(&mut response, buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => {
            return Err(format!("not an HTTP/1 response: `{}`", status_line()));
        }
        Err(httparse::Error::Status) => {
            return Err(format!("no status code in `{}`", status_line()));
        }
        Err(e) => {
            return Err(format!(
                "malformed response head ({e}): `{}`",
                status_line()
            ));
        }
    };
    let status = response.code.unwrap_or_default();
    let mut content_length = None;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    let mut pid = None;
    for h in response.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length `{}`", clip(value)))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = contains_ignore_ascii_case(value, "chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if contains_ignore_ascii_case(value, "close") {
                close = true;
            } else if contains_ignore_ascii_case(value, "keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case(&rules.pid_header) {
            pid = value.parse().ok();
        }
    }
    // Where the body's data is: one range, or a chunked body's chunks.
    let mut body = head_end..head_end;
    let mut chunks = Vec::new();
    let body_end = if head || status == 204 || status == 304 || (100..200).contains(&status) {
        // No body, whatever the headers say (RFC 9112 section 6.3).
        head_end
    } else if chunked {
        match chunked_body(buf, head_end, &mut chunks)? {
            Some(end) => end,
            // Incomplete; at EOF the caller reports it as short.
            None => return Ok(None),
        }
    } else if let Some(len) = content_length {
        if len > MAX_BODY {
            return Err(format!("Content-Length {len} beyond {MAX_BODY}"));
        }
        if buf.len() < head_end + len {
            return Ok(None);
        }
        body = head_end..head_end + len;
        head_end + len
    } else if eof {
        // No length: the body runs to the end of the connection.
        close = true;
        body = head_end..buf.len();
        buf.len()
    } else {
        return Ok(None);
    };
    if status != 200 {
        return Err(format!(
            "status {status}, expected 200: `{}`",
            status_line()
        ));
    }
    let joined: Vec<u8>;
    let body = if chunks.is_empty() {
        &buf[body]
    } else {
        joined = chunks.into_iter().flat_map(|r| &buf[r]).copied().collect();
        &joined
    };
    rules.check(body, token)?;
    let pid = pid.or_else(|| rules.pid_in(body));
    Ok(Some((Reply { pid, close }, body_end)))
}

/// What servers send and clients such as curl accept beyond the strict grammar: spaces
/// before a header's colon, several spaces around the status code, folded header lines.
fn lenient() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_obsolete_multiline_headers_in_responses(true);
    config
}

/// Reads a chunked body that starts at `start`: each chunk's size line (`httparse`), its data
/// (whatever bytes it holds) and CRLF, up to the last chunk and its trailer section. Pushes
/// the data's ranges to `data`; the end of the body, or `None` while it is incomplete.
fn chunked_body(
    buf: &[u8],
    start: usize,
    data: &mut Vec<std::ops::Range<usize>>,
) -> Result<Option<usize>, String> {
    let mut at = start;
    let mut total: usize = 0;
    loop {
        let rest = &buf[at..];
        let (used, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) if rest.len() > MAX_HEAD => {
                return Err(format!("chunk size line longer than {MAX_HEAD} bytes"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => {
                let line = &rest[..find(rest, b"\r\n").unwrap_or(rest.len())];
                return Err(format!(
                    "bad chunk size line `{}`",
                    clip(&String::from_utf8_lossy(line))
                ));
            }
        };
        at += used;
        if size == 0 {
            break;
        }
        total = usize::try_from(size)
            .ok()
            .and_then(|n| total.checked_add(n))
            .filter(|t| *t <= MAX_BODY)
            .ok_or_else(|| format!("chunked body beyond {MAX_BODY} bytes"))?;
        let end = at + (size as usize);
        let Some(crlf) = buf.get(end..end + 2) else {
            return Ok(None);
        };
        if crlf != b"\r\n" {
            return Err(format!("chunk of {size} bytes not followed by CRLF"));
        }
        data.push(at..end);
        at = end + 2;
    }
    // The trailer section: header fields, then an empty line (often only the empty line).
    let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(&buf[at..], &mut trailers) {
        Ok(httparse::Status::Complete((used, _))) => Ok(Some(at + used)),
        Ok(httparse::Status::Partial) if buf.len() - at > MAX_HEAD => {
            Err(format!("trailer section longer than {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("malformed trailer section ({e})")),
    }
}

/// The number after the first `pid=` word in `text`.
pub fn pid_in_text(text: &str) -> Option<u32> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|v| v.parse().ok())
}

/// Whether `hay` contains `needle` (lowercase ASCII), ignoring ASCII case.
fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(120).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(buf: &[u8], token: &str) -> Result<Option<(Reply, usize)>, String> {
        Rules::default_for(Protocol::Line).parse(buf, false, false, token)
    }

    fn http(buf: &[u8], eof: bool) -> Result<Option<(Reply, usize)>, String> {
        Rules::default_for(Protocol::Http1).parse(buf, eof, false, "c0-1")
    }

    #[test]
    fn line_replies_must_echo_the_exact_token() {
        let (r, used) = line(b"pid=42 gen=2 c1-1\nrest", "c1-1")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.pid, Some(42));
        assert_eq!(used, 18);
        assert_eq!(line(b"pid=42 gen=2 c1-", "c1-1"), Ok(None));
        // `c1-1` inside `c1-10` is not an echo of it.
        assert!(line(b"pid=42 c1-10\n", "c1-1").is_err());
        let (r, _) = line(b"c1-1\r\n", "c1-1").expect("valid").expect("complete");
        assert_eq!(r.pid, None);
    }

    #[test]
    fn a_line_reply_that_announces_a_close_ends_the_connection() {
        let (r, _) = line(b"pid=7 gen=1 conn=close c1-1\n", "c1-1")
            .expect("valid")
            .expect("complete");
        assert!(r.close);
        let (r, _) = line(b"pid=7 gen=1 conn=keep c1-1\n", "c1-1")
            .expect("valid")
            .expect("complete");
        assert!(!r.close);
    }

    #[test]
    fn http_replies_with_content_length() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nX-Handoff-Pid: 77\r\nConnection: keep-alive\r\n\r\npid=77 gen=1\n\nNEXT";
        let (r, used) = http(resp, false).expect("valid").expect("complete");
        assert_eq!(
            r,
            Reply {
                pid: Some(77),
                close: false
            }
        );
        assert_eq!(&resp[used..], b"NEXT");
        // Incomplete body.
        assert_eq!(http(&resp[..resp.len() - 8], false), Ok(None));
        // Incomplete head.
        assert_eq!(http(b"HTTP/1.1 200 OK\r\nContent-", false), Ok(None));
    }

    #[test]
    fn http_pid_falls_back_to_the_body_and_close_is_honoured() {
        let resp =
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 13\r\n\r\npid=5 gen=3\r\n";
        let (r, _) = http(resp, false).expect("valid").expect("complete");
        assert_eq!(
            r,
            Reply {
                pid: Some(5),
                close: true
            }
        );
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (r, _) = http(old, false).expect("valid").expect("complete");
        assert!(r.close);
    }

    #[test]
    fn http_header_names_and_tokens_ignore_case() {
        let resp = b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 3\r\nx-HANDOFF-pid: 8\r\nCONNECTION: Keep-Alive, CLOSE\r\n\r\nabc";
        let (r, used) = http(resp, false).expect("valid").expect("complete");
        assert_eq!((r.pid, r.close, used), (Some(8), true, resp.len()));
        let chunked = b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: gzip, Chunked\r\n\r\n0\r\n\r\n";
        let (_, used) = http(chunked, false).expect("valid").expect("complete");
        assert_eq!(used, chunked.len());
        assert!(contains_ignore_ascii_case("Keep-Alive", "keep-alive"));
        assert!(!contains_ignore_ascii_case("clos", "close"));
    }

    #[test]
    fn http_body_to_eof_and_chunked() {
        let resp = b"HTTP/1.1 200 OK\r\n\r\npid=9";
        assert_eq!(http(resp, false), Ok(None));
        let (r, used) = http(resp, true).expect("valid").expect("complete");
        assert_eq!((r.pid, r.close, used), (Some(9), true, resp.len()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\npid=3\n\r\n0\r\n\r\n";
        let (r, used) = http(chunked, false).expect("valid").expect("complete");
        assert_eq!((r.pid, used), (Some(3), chunked.len()));
        assert_eq!(http(&chunked[..chunked.len() - 2], false), Ok(None));
    }

    /// A chunked reply whose last chunk is followed by a trailer field: the reply ends after
    /// the trailer section's empty line (there is no `0\r\n\r\n` in it to search for).
    #[test]
    fn http_chunked_reply_with_a_trailer_ends_after_the_trailer() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n6\r\npid=3\n\r\n0\r\nX-Checksum: 12ab\r\n\r\nNEXT";
        let (r, used) = http(resp, false).expect("valid").expect("complete");
        assert_eq!(r.pid, Some(3));
        assert_eq!(&resp[used..], b"NEXT");
        // Without the trailer section's closing empty line, the reply is not complete.
        let unfinished = resp.len() - b"\r\nNEXT".len();
        assert_eq!(http(&resp[..unfinished], false), Ok(None));
    }

    /// Chunk data may hold the bytes of a last chunk (`0\r\n\r\n`, here right after a
    /// newline): they are data, counted by the chunk's size, and do not end the reply.
    #[test]
    fn http_chunk_data_holding_a_last_chunk_lookalike_is_data() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".len();
        // 0xe = 14 bytes of data: `pid=4\n0\r\n\r\nabc`.
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\npid=4\n0\r\n\r\nabc\r\n0\r\n\r\nNEXT";
        let (r, used) = http(resp, false).expect("valid").expect("complete");
        assert_eq!(r.pid, Some(4));
        assert_eq!(&resp[used..], b"NEXT");
        for cut in head..resp.len() - b"NEXT".len() {
            assert_eq!(
                http(&resp[..cut], false),
                Ok(None),
                "complete after only {cut} bytes"
            );
        }
    }

    /// Chunk extensions (`;name=value` after a chunk size, the last chunk's included) are
    /// skipped, and the size before them counts.
    #[test]
    fn http_chunk_extensions_are_skipped() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6;name=value\r\npid=5\n\r\n0;last\r\n\r\n";
        let (r, used) = http(resp, false).expect("valid").expect("complete");
        assert_eq!((r.pid, used), (Some(5), resp.len()));
    }

    #[test]
    fn http_malformed_chunks_are_bad_replies() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bad_size = format!("{head}zz\r\npid=5\n\r\n0\r\n\r\n");
        let e = http(bad_size.as_bytes(), false).expect_err("bad size");
        assert!(e.contains("chunk size"), "{e}");
        let no_crlf = format!("{head}2\r\nabcd\r\n0\r\n\r\n");
        let e = http(no_crlf.as_bytes(), false).expect_err("no CRLF after data");
        assert!(e.contains("chunk"), "{e}");
    }

    #[test]
    fn http_errors_are_bad_replies() {
        let e = http(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", false).expect_err("503");
        assert!(e.contains("503"), "{e}");
        assert!(http(b"SSH-2.0-x\r\n\r\n", false).is_err());
        assert!(http(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(http(b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n", false).is_err());
    }

    #[test]
    fn partial_replies_still_name_their_server() {
        assert_eq!(
            Rules::default_for(Protocol::Http1)
                .partial_pid(b"HTTP/1.1 200 OK\r\nx-handoff-pid: 12\r\n"),
            Some(12)
        );
        assert_eq!(
            Rules::default_for(Protocol::Http1).partial_pid(b"pid=13 gen=1 c0-"),
            Some(13)
        );
        assert_eq!(
            Rules::default_for(Protocol::Http1).partial_pid(b"HTTP/1.1 20"),
            None
        );
    }

    #[test]
    fn patterns_are_checked_for_their_use() {
        assert!(compile_pid_pattern(r"pid[:=](\d+)").is_ok());
        let e = compile_pid_pattern(r"pid=\d+").expect_err("no group");
        assert!(
            e.contains("exactly one capture group") && e.contains("has 0"),
            "{e}"
        );
        let e = compile_pid_pattern(r"(pid)=(\d+)").expect_err("two groups");
        assert!(e.contains("has 2"), "{e}");
        let e = compile_reply_end(r"\n?").expect_err("matches nothing at all");
        assert!(e.contains("matches an empty reply"), "{e}");
        let e = compile_reply_match("--ll--({token}").expect_err("unclosed group");
        assert!(
            e.contains("not a valid regex") && e.contains("--ll--({token}") && !e.contains('\n'),
            "{e}"
        );
        let (_, tokens) = compile_reply_match("{token} and {token}").expect("two places");
        assert_eq!(tokens, 2);
    }

    #[test]
    fn a_reply_match_with_the_token_twice_needs_it_twice() {
        let x = Exchange {
            reply_match: Some("^{token}:{token}$".into()),
            ..Exchange::default()
        };
        let rules = Rules::new(Protocol::Line, &x).expect("compiles");
        assert!(
            rules
                .parse(b"c1-2:c1-2\n", false, false, "c1-2")
                .is_ok_and(|r| r.is_some())
        );
        assert!(rules.parse(b"c1-2:c1-3\n", false, false, "c1-2").is_err());
    }

    #[test]
    fn a_pattern_end_that_never_comes_is_a_bad_reply_past_the_limit() {
        let x = Exchange {
            reply_end: ReplyEnd::Pattern("END\n".into()),
            ..Exchange::default()
        };
        let rules = Rules::new(Protocol::Banner, &x).expect("compiles");
        assert_eq!(rules.parse(b"no end yet", false, false, "c0-1"), Ok(None));
        let long = vec![b'x'; MAX_HEAD + 1];
        let e = rules
            .parse(&long, false, false, "c0-1")
            .expect_err("too long");
        assert!(e.contains("no match of `reply-end`"), "{e}");
    }
}
