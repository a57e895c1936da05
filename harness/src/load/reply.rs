//! The protocol parsers: a line-protocol reply and an HTTP/1.x response, each to a [`Reply`]
//! (the pid it names, whether the server closes after it) and the bytes it used.

/// Longest reply head or line accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest HTTP body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The pid the reply named, if it named one.
    pub pid: Option<u32>,
    /// The server announced it closes the connection after this reply.
    pub close: bool,
}

/// Parses a line-protocol reply: one line that contains `token` as a word, and `pid=<n>`.
/// Returns the reply and the bytes it used, or `None` when the line is not complete yet.
pub fn parse_line_reply(buf: &[u8], token: &str) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_HEAD {
            return Err(format!("reply line longer than {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[..end]);
    let line = line.trim_end_matches('\r');
    if !line.split_whitespace().any(|w| w == token) {
        return Err(format!("reply `{}` does not echo `{token}`", clip(line)));
    }
    Ok(Some((
        Reply {
            pid: pid_in_text(line),
            // A server may announce that it closes the connection after this reply (the
            // reference servers say `conn=close` while draining); then the client does not
            // reuse it, rather than race the FIN.
            close: line.split_whitespace().any(|w| w == "conn=close"),
        },
        end + 1,
    )))
}

/// Header slots for a response head (and for a trailer section); more is a bad reply.
const MAX_HEADERS: usize = 100;

/// Parses an HTTP/1.x response (with `httparse`): status 200, headers, and a body delimited
/// by `Content-Length`, chunked encoding (chunk sizes read one by one, extensions skipped, a
/// trailer section allowed), or (with `eof`) the end of the connection.
pub fn parse_http_reply(buf: &[u8], eof: bool) -> Result<Option<(Reply, usize)>, String> {
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
        } else if h.name.eq_ignore_ascii_case("x-handoff-pid") {
            pid = value.parse().ok();
        }
    }
    // Where the body's data is: one range, or a chunked body's chunks.
    let mut body = head_end..head_end;
    let mut chunks = Vec::new();
    let body_end = if chunked {
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
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        head_end
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
    let pid = pid.or_else(|| {
        if chunks.is_empty() {
            return pid_in_text(&String::from_utf8_lossy(&buf[body]));
        }
        let data: Vec<u8> = chunks.into_iter().flat_map(|r| &buf[r]).copied().collect();
        pid_in_text(&String::from_utf8_lossy(&data))
    });
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

/// The pid named by a partial reply, for the record of a failed connection.
pub(super) fn partial_pid(buf: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(buf);
    text.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("x-handoff-pid")
                .then(|| value.trim().parse().ok())?
        })
        .or_else(|| pid_in_text(&text))
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

    #[test]
    fn line_replies_must_echo_the_exact_token() {
        let (r, used) = parse_line_reply(b"pid=42 gen=2 c1-1\nrest", "c1-1")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.pid, Some(42));
        assert_eq!(used, 18);
        assert_eq!(parse_line_reply(b"pid=42 gen=2 c1-", "c1-1"), Ok(None));
        // `c1-1` inside `c1-10` is not an echo of it.
        assert!(parse_line_reply(b"pid=42 c1-10\n", "c1-1").is_err());
        let (r, _) = parse_line_reply(b"c1-1\r\n", "c1-1")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.pid, None);
    }

    #[test]
    fn a_line_reply_that_announces_a_close_ends_the_connection() {
        let (r, _) = parse_line_reply(b"pid=7 gen=1 conn=close c1-1\n", "c1-1")
            .expect("valid")
            .expect("complete");
        assert!(r.close);
        let (r, _) = parse_line_reply(b"pid=7 gen=1 conn=keep c1-1\n", "c1-1")
            .expect("valid")
            .expect("complete");
        assert!(!r.close);
    }

    #[test]
    fn http_replies_with_content_length() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nX-Handoff-Pid: 77\r\nConnection: keep-alive\r\n\r\npid=77 gen=1\n\nNEXT";
        let (r, used) = parse_http_reply(resp, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            r,
            Reply {
                pid: Some(77),
                close: false
            }
        );
        assert_eq!(&resp[used..], b"NEXT");
        // Incomplete body.
        assert_eq!(parse_http_reply(&resp[..resp.len() - 8], false), Ok(None));
        // Incomplete head.
        assert_eq!(
            parse_http_reply(b"HTTP/1.1 200 OK\r\nContent-", false),
            Ok(None)
        );
    }

    #[test]
    fn http_pid_falls_back_to_the_body_and_close_is_honoured() {
        let resp =
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 13\r\n\r\npid=5 gen=3\r\n";
        let (r, _) = parse_http_reply(resp, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            r,
            Reply {
                pid: Some(5),
                close: true
            }
        );
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (r, _) = parse_http_reply(old, false)
            .expect("valid")
            .expect("complete");
        assert!(r.close);
    }

    #[test]
    fn http_header_names_and_tokens_ignore_case() {
        let resp = b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 3\r\nx-HANDOFF-pid: 8\r\nCONNECTION: Keep-Alive, CLOSE\r\n\r\nabc";
        let (r, used) = parse_http_reply(resp, false)
            .expect("valid")
            .expect("complete");
        assert_eq!((r.pid, r.close, used), (Some(8), true, resp.len()));
        let chunked = b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: gzip, Chunked\r\n\r\n0\r\n\r\n";
        let (_, used) = parse_http_reply(chunked, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(used, chunked.len());
        assert!(contains_ignore_ascii_case("Keep-Alive", "keep-alive"));
        assert!(!contains_ignore_ascii_case("clos", "close"));
    }

    #[test]
    fn http_body_to_eof_and_chunked() {
        let resp = b"HTTP/1.1 200 OK\r\n\r\npid=9";
        assert_eq!(parse_http_reply(resp, false), Ok(None));
        let (r, used) = parse_http_reply(resp, true)
            .expect("valid")
            .expect("complete");
        assert_eq!((r.pid, r.close, used), (Some(9), true, resp.len()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\npid=3\n\r\n0\r\n\r\n";
        let (r, used) = parse_http_reply(chunked, false)
            .expect("valid")
            .expect("complete");
        assert_eq!((r.pid, used), (Some(3), chunked.len()));
        assert_eq!(
            parse_http_reply(&chunked[..chunked.len() - 2], false),
            Ok(None)
        );
    }

    /// A chunked reply whose last chunk is followed by a trailer field: the reply ends after
    /// the trailer section's empty line (there is no `0\r\n\r\n` in it to search for).
    #[test]
    fn http_chunked_reply_with_a_trailer_ends_after_the_trailer() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n6\r\npid=3\n\r\n0\r\nX-Checksum: 12ab\r\n\r\nNEXT";
        let (r, used) = parse_http_reply(resp, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(r.pid, Some(3));
        assert_eq!(&resp[used..], b"NEXT");
        // Without the trailer section's closing empty line, the reply is not complete.
        let unfinished = resp.len() - b"\r\nNEXT".len();
        assert_eq!(parse_http_reply(&resp[..unfinished], false), Ok(None));
    }

    /// Chunk data may hold the bytes of a last chunk (`0\r\n\r\n`, here right after a
    /// newline): they are data, counted by the chunk's size, and do not end the reply.
    #[test]
    fn http_chunk_data_holding_a_last_chunk_lookalike_is_data() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".len();
        // 0xe = 14 bytes of data: `pid=4\n0\r\n\r\nabc`.
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\npid=4\n0\r\n\r\nabc\r\n0\r\n\r\nNEXT";
        let (r, used) = parse_http_reply(resp, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(r.pid, Some(4));
        assert_eq!(&resp[used..], b"NEXT");
        for cut in head..resp.len() - b"NEXT".len() {
            assert_eq!(
                parse_http_reply(&resp[..cut], false),
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
        let (r, used) = parse_http_reply(resp, false)
            .expect("valid")
            .expect("complete");
        assert_eq!((r.pid, used), (Some(5), resp.len()));
    }

    #[test]
    fn http_malformed_chunks_are_bad_replies() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bad_size = format!("{head}zz\r\npid=5\n\r\n0\r\n\r\n");
        let e = parse_http_reply(bad_size.as_bytes(), false).expect_err("bad size");
        assert!(e.contains("chunk size"), "{e}");
        let no_crlf = format!("{head}2\r\nabcd\r\n0\r\n\r\n");
        let e = parse_http_reply(no_crlf.as_bytes(), false).expect_err("no CRLF after data");
        assert!(e.contains("chunk"), "{e}");
    }

    #[test]
    fn http_errors_are_bad_replies() {
        let e = parse_http_reply(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", false)
            .expect_err("503");
        assert!(e.contains("503"), "{e}");
        assert!(parse_http_reply(b"SSH-2.0-x\r\n\r\n", false).is_err());
        assert!(parse_http_reply(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_http_reply(b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n", false).is_err());
    }

    #[test]
    fn partial_replies_still_name_their_server() {
        assert_eq!(
            partial_pid(b"HTTP/1.1 200 OK\r\nx-handoff-pid: 12\r\n"),
            Some(12)
        );
        assert_eq!(partial_pid(b"pid=13 gen=1 c0-"), Some(13));
        assert_eq!(partial_pid(b"HTTP/1.1 20"), None);
    }
}
