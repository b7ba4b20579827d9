//! The byte streams under `maestro mcp`: one dedicated thread reads stdin, one writes
//! stdout, and the runtime meets them through a channel each way.
//!
//! Tokio's own stdin and stdout run every read and every write as a task on its
//! blocking pool, so each message crossed several threads (runtime worker → blocking
//! thread → runtime worker) on top of the handler's own hops. Here the reader thread
//! sits in a blocking `read` and hands what it read to the runtime (one wake-up), and
//! a response goes from the runtime to the writer thread (one wake-up) which writes
//! everything queued before it flushes. Framing, parsing and the protocol's error
//! answers stay rmcp's (its line transport runs over these streams).

use std::io::{Read as _, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// Chunks read from stdin, or responses written to stdout, that may wait in a channel.
const QUEUED: usize = 64;
/// The reader thread's buffer: one `read` returns at most this much.
const READ_CHUNK: usize = 64 * 1024;

/// The reading half: what the reader thread read from stdin, in order.
#[derive(Debug)]
pub(super) struct ThreadReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

/// The writing half: bytes gathered until a flush, then handed to the writer thread.
#[derive(Debug)]
pub(super) struct ThreadWriter {
    pending: Vec<u8>,
    to_thread: PollSender<Vec<u8>>,
}

/// Starts the stdin reader and stdout writer threads: the streams to run MCP over, and
/// the writer thread, which ends once the writing half is dropped and everything handed
/// to it is written (join it before the process exits, so no answer is cut short). The
/// reader ends at end of input and never keeps the process alive.
pub(super) fn threads() -> std::io::Result<(ThreadReader, ThreadWriter, std::thread::JoinHandle<()>)> {
    let (chunk_tx, chunk_rx) = mpsc::channel(QUEUED);
    std::thread::Builder::new().name("mcp-stdin".to_owned()).spawn(move || read_stdin(&chunk_tx))?;
    let (out_tx, out_rx) = mpsc::channel(QUEUED);
    let writer = std::thread::Builder::new().name("mcp-stdout".to_owned()).spawn(move || write_stdout(out_rx))?;
    Ok((
        ThreadReader { chunks: chunk_rx, chunk: Vec::new(), at: 0 },
        ThreadWriter { pending: Vec::with_capacity(4096), to_thread: PollSender::new(out_tx) },
        writer,
    ))
}

/// Reads stdin until its end (or an error, or the reading half is gone).
fn read_stdin(chunks: &mpsc::Sender<Vec<u8>>) {
    let mut stdin = std::io::stdin().lock();
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        match stdin.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => {
                if chunks.blocking_send(buffer[..read].to_vec()).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::error!(error = %err, "cannot read stdin");
                return;
            }
        }
    }
}

/// Writes what arrives to stdout, flushing once nothing more is queued.
fn write_stdout(mut queued: mpsc::Receiver<Vec<u8>>) {
    let stdout = std::io::stdout();
    while let Some(bytes) = queued.blocking_recv() {
        let mut out = stdout.lock();
        let mut written = out.write_all(&bytes);
        while written.is_ok()
            && let Ok(more) = queued.try_recv()
        {
            written = out.write_all(&more);
        }
        if let Err(err) = written.and_then(|()| out.flush()) {
            tracing::error!(error = %err, "cannot write stdout");
            return;
        }
    }
}

impl AsyncRead for ThreadReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at == this.chunk.len() {
            match ready!(this.chunks.poll_recv(cx)) {
                Some(chunk) => (this.chunk, this.at) = (chunk, 0),
                // End of input: a read of nothing.
                None => return Poll::Ready(Ok(())),
            }
        }
        let take = buf.remaining().min(this.chunk.len() - this.at);
        buf.put_slice(&this.chunk[this.at..this.at + take]);
        this.at += take;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ThreadWriter {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if ready!(this.to_thread.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let bytes = std::mem::replace(&mut this.pending, Vec::with_capacity(4096));
        match this.to_thread.send_item(bytes) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        self.get_mut().to_thread.close();
        Poll::Ready(Ok(()))
    }
}
