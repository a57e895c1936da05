//! Minimal HTTP/1.1: any request is answered `200 OK` with the body `pid=<pid> gen=<n>` and
//! the headers `X-Handoff-Pid` and `X-Handoff-Gen`. Keep-alive by default; while draining,
//! each response says `Connection: close` and the connection is closed after it.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::serve::Ctx;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read (and discarded).
const MAX_BODY: u64 = 1024 * 1024;

struct Head {
    keep_alive: bool,
    content_length: u64,
}

/// Reads one request head; `Ok(None)` on a clean EOF before any byte of it.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
) -> std::io::Result<Option<Result<Head, &'static str>>> {
    let mut line = String::new();
    let mut total = 0;
    let mut first = true;
    let mut head = Head {
        keep_alive: true,
        content_length: 0,
    };
    loop {
        line.clear();
        let n = stream
            .take((MAX_HEAD - total) as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(if first {
                None
            } else {
                Some(Err("EOF inside the request head"))
            });
        }
        total += n;
        if !line.ends_with('\n') {
            return Ok(Some(Err("request head too large")));
        }
        let text = line.trim_end();
        if first {
            first = false;
            let mut parts = text.split(' ');
            let (Some(_method), Some(_target), Some(version)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Ok(Some(Err("malformed request line")));
            };
            match version {
                "HTTP/1.1" => {}
                "HTTP/1.0" => head.keep_alive = false,
                _ => return Ok(Some(Err("unsupported HTTP version"))),
            }
            continue;
        }
        if text.is_empty() {
            return Ok(Some(Ok(head)));
        }
        let Some((name, value)) = text.split_once(':') else {
            return Ok(Some(Err("malformed header line")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse() {
                Ok(len) if len <= MAX_BODY => head.content_length = len,
                _ => return Ok(Some(Err("bad Content-Length"))),
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                head.keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                head.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Ok(Some(Err("chunked request bodies are not supported")));
        }
    }
}

pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ctx: &Ctx,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let head = match read_head(&mut stream).await? {
            None => return Ok(()),
            Some(Ok(head)) => head,
            Some(Err(why)) => {
                let body = format!("{why}\n");
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.get_mut().write_all(response.as_bytes()).await?;
                return stream.get_mut().shutdown().await;
            }
        };
        let mut body = (&mut stream).take(head.content_length);
        tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        if !ctx.delay.is_zero() {
            tokio::time::sleep(ctx.delay).await;
        }
        let keep_alive = head.keep_alive && !ctx.draining();
        let body = format!("pid={} gen={}\n", ctx.pid, ctx.generation);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Handoff-Pid: {}\r\nX-Handoff-Gen: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            ctx.pid,
            ctx.generation,
            if keep_alive { "keep-alive" } else { "close" },
        );
        stream.get_mut().write_all(response.as_bytes()).await?;
        if !keep_alive {
            return stream.get_mut().shutdown().await;
        }
    }
}
