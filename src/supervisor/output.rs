//! The supervisor's output: every line a child prints goes to the
//! supervisor's stdout prefixed with the child's name, as foreman does; the
//! supervisor's own lines use the name `supervisor`.
//!
//! Writing never blocks supervision. Lines go through a bounded queue to a
//! writer thread, which is the only code that touches stdout. When whatever
//! reads stdout stalls (`| less`, a paused terminal, a slow log shipper),
//! the queue fills, further lines are dropped and counted, and the count is
//! printed once output flows again. Children's pipes are drained all the
//! while, so children never block on their own logging because of it.
//! Bytes that are not UTF-8 are forwarded with replacement characters.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Width of the name column: "supervisor" is the longest name there is.
const NAME_WIDTH: usize = "supervisor".len();
/// Lines held while stdout is stalled before new ones are dropped.
const QUEUE_LINES: usize = 10_000;
/// A child line longer than this is cut into pieces.
const MAX_LINE_BYTES: usize = 16 * 1024;

enum Message {
    /// `count` lines, each ending in a newline.
    Lines {
        text: String,
        count: u64,
    },
    Flush(SyncSender<()>),
}

struct Sink {
    queue: SyncSender<Message>,
    /// Lines queued and not yet written: a batch counts all of its lines.
    queued: AtomicU64,
    dropped: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();
static WRITER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let (queue, lines) = sync_channel(QUEUE_LINES);
        let handle = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || write_lines(lines))
            .expect("starting the output thread");
        *WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Sink {
            queue,
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    })
}

fn write_lines(lines: Receiver<Message>) {
    let stdout = std::io::stdout();
    for message in lines {
        match message {
            Message::Lines { text, count } => {
                let mut out = stdout.lock();
                let _ = out.write_all(text.as_bytes());
                if let Some(sink) = SINK.get() {
                    sink.queued.fetch_sub(count, Ordering::Relaxed);
                }
                let dropped = SINK
                    .get()
                    .map_or(0, |s| s.dropped.swap(0, Ordering::Relaxed));
                if dropped > 0 {
                    let _ = writeln!(
                        out,
                        "{:<NAME_WIDTH$} | output was stalled: {dropped} lines dropped",
                        "supervisor"
                    );
                }
                let _ = out.flush();
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Queues one line with a name prefix; drops it (counted) if stdout is stalled.
pub fn line(name: &str, text: &str) {
    sink().send(format!("{name:<NAME_WIDTH$} | {text}\n"), lines_in(text));
}

/// How many output lines `text` makes (it may hold newlines of its own).
fn lines_in(text: &str) -> u64 {
    1 + text.bytes().filter(|&b| b == b'\n').count() as u64
}

/// Lines under one name, formatted as they are pushed (no allocation per
/// line) and queued together by [`Batch::send`]: one write for all.
pub struct Batch {
    prefix: String,
    text: String,
    count: u64,
}

impl Batch {
    pub fn new(name: &str) -> Self {
        Self {
            prefix: format!("{name:<NAME_WIDTH$} | "),
            text: String::new(),
            count: 0,
        }
    }

    /// Adds `text` as a line (or as several, if it holds newlines).
    pub fn push(&mut self, text: &str) {
        self.text.push_str(&self.prefix);
        self.text.push_str(text);
        self.text.push('\n');
        self.count += lines_in(text);
    }

    /// Queues the lines pushed so far; all dropped (and counted) if stdout
    /// is stalled. The batch is empty again afterwards.
    pub fn send(&mut self) {
        if self.count == 0 {
            return;
        }
        let text = std::mem::take(&mut self.text);
        sink().send(text, std::mem::take(&mut self.count));
    }
}

impl Sink {
    /// Queues formatted lines, unless that would hold more than
    /// [`QUEUE_LINES`]: then they are dropped and counted.
    fn send(&self, formatted: String, count: u64) {
        let queued = self.queued.fetch_add(count, Ordering::Relaxed);
        let sent = queued + count <= QUEUE_LINES as u64
            && self
                .queue
                .try_send(Message::Lines {
                    text: formatted,
                    count,
                })
                .is_ok();
        if !sent {
            self.queued.fetch_sub(count, Ordering::Relaxed);
            self.dropped.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// Waits up to `timeout` for the queued lines to be written (at exit).
pub fn flush(timeout: Duration) {
    let sink = sink();
    let (done, wait) = sync_channel(1);
    let deadline = Instant::now() + timeout;
    let mut message = Message::Flush(done);
    loop {
        match sink.queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                message = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

/// Copies `stream` line by line to the output under `name` until it closes.
pub async fn forward(name: String, stream: impl AsyncRead + Unpin) {
    read_lines(stream, |text| line(&name, &text)).await;
}

/// Calls `each` with every line of `stream` (without its line ending),
/// decoding lossily and cutting lines longer than `MAX_LINE_BYTES`.
async fn read_lines(stream: impl AsyncRead + Unpin, mut each: impl FnMut(String)) {
    let mut reader = BufReader::new(stream);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buffer)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buffer);
                each(text.trim_end_matches(['\n', '\r']).to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_output_holds_at_most_its_lines_however_they_are_batched() {
        // A sink whose writer never writes: stdout stalled.
        let (queue, _unread) = sync_channel(QUEUE_LINES);
        let sink = Sink {
            queue,
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        };
        let batch = |lines: usize| {
            let mut batch = Batch::new("nginx");
            for _ in 0..lines {
                batch.push("GET / 200");
            }
            assert_eq!(batch.count, lines as u64);
            (batch.text, batch.count)
        };
        let send = |(text, count)| sink.send(text, count);
        send(batch(QUEUE_LINES - 1000));
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
        // One batch past the bound is dropped whole, and each line counted.
        send(batch(1001));
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 1001);
        send(batch(1000));
        send(batch(1));
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 1002);
        assert_eq!(sink.queued.load(Ordering::Relaxed), QUEUE_LINES as u64);
    }

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        read_lines(input, |text| seen.push(text)).await;
        seen
    }

    #[test]
    fn a_batch_counts_and_prefixes_every_line() {
        let mut batch = Batch::new("nginx");
        batch.push("one");
        batch.push("two\nthree");
        assert_eq!(batch.text, "nginx      | one\nnginx      | two\nthree\n");
        assert_eq!(batch.count, 3);
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_are_replaced_and_forwarding_goes_on() {
        let seen = lines_of(b"first\n\xff\xfe bad\r\nlast").await;
        assert_eq!(seen, ["first", "\u{fffd}\u{fffd} bad", "last"]);
    }

    #[tokio::test]
    async fn an_endless_line_is_cut_into_pieces() {
        let input = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let seen = lines_of(&input).await;
        let lengths: Vec<usize> = seen.iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
    }
}
