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

/// Parses an HTTP/1.x response: status 200, headers, and a body delimited by
/// `Content-Length`, chunked encoding, or (with `eof`) the end of the connection.
pub fn parse_http_reply(buf: &[u8], eof: bool) -> Result<Option<(Reply, usize)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: `{}`", clip(status_line)));
    }
    let Some(status) = status else {
        return Err(format!("no status code in `{}`", clip(status_line)));
    };
    let mut content_length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    let mut pid = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed header line `{}`", clip(line)));
        };
        let value = value.trim();
        // Compared in place, case-insensitively: no allocation per header.
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length `{}`", clip(value)))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = contains_ignore_ascii_case(value, "chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            if contains_ignore_ascii_case(value, "close") {
                close = true;
            } else if contains_ignore_ascii_case(value, "keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("x-handoff-pid") {
            pid = value.parse().ok();
        }
    }
    let body_start = head_end + 4;
    let body_end = if chunked {
        match find(&buf[body_start..], b"0\r\n\r\n") {
            Some(i) if i == 0 || buf[body_start + i - 1] == b'\n' => body_start + i + 5,
            // Incomplete; at EOF the caller reports it as short.
            _ => return Ok(None),
        }
    } else if let Some(len) = content_length {
        if len > MAX_BODY {
            return Err(format!("Content-Length {len} beyond {MAX_BODY}"));
        }
        if buf.len() < body_start + len {
            return Ok(None);
        }
        body_start + len
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        body_start
    } else if eof {
        // No length: the body runs to the end of the connection.
        close = true;
        buf.len()
    } else {
        return Ok(None);
    };
    if status != 200 {
        return Err(format!(
            "status {status}, expected 200: `{}`",
            clip(status_line)
        ));
    }
    let pid = pid.or_else(|| pid_in_text(&String::from_utf8_lossy(&buf[body_start..body_end])));
    Ok(Some((Reply { pid, close }, body_end)))
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
