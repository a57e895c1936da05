//! The line protocol: each request line is answered by one line,
//! `pid=<pid> gen=<n> conn=<keep|close> <request>`, after the configured delay.
//!
//! `conn=close` announces that the server closes the connection right after this reply (it
//! is draining), so a client can tell a handover from a drop without racing the FIN: the
//! server never closes a connection without saying so, except when its drain deadline cuts
//! an idle one.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::serve::Ctx;

/// Longest request line accepted; a longer one ends the connection.
const MAX_LINE: usize = 64 * 1024;

pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ctx: &Ctx,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut stream)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            // Over-long, or EOF in the middle of a line: nothing complete to answer.
            return Ok(());
        }
        if !ctx.delay.is_zero() {
            tokio::time::sleep(ctx.delay).await;
        }
        let request = String::from_utf8_lossy(&line[..line.len() - 1]);
        let request = request.trim_end_matches('\r');
        // Decided before the reply is written, so what the reply says is what happens.
        let closing = ctx.draining();
        let conn = if closing { "close" } else { "keep" };
        let reply = format!(
            "pid={} gen={} conn={conn} {request}\n",
            ctx.pid, ctx.generation
        );
        stream.get_mut().write_all(reply.as_bytes()).await?;
        if closing {
            // Hand the client over: it reconnects and reaches the new generation.
            return stream.get_mut().shutdown().await;
        }
    }
}
