//! The writer's own Redis connection: a batch of events encoded as `XADD`s
//! straight into one RESP buffer, written at once, and its replies counted.
//!
//! Why not the Redis client the readers use: a client builds, queues and
//! matches every command of a pipeline as an object of its own (a buffer, a
//! command struct, a reply), which at one event per scored row cost the
//! service more CPU than the 10% the log may take (BENCHMARKS.md). The
//! writer needs one command and no reply values, so it encodes that command
//! itself and only checks that each reply is not an error. Connection
//! settings (host, port, user, password, database) come from the same URL
//! parser the readers use.

use rustis::client::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{Event, STREAM_KEY};

/// Where and as whom to connect: a standalone Redis.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    database: usize,
}

impl Target {
    /// The standalone server a parsed `redis://` URL names; `None` for the
    /// others (Sentinel, Cluster, Unix socket), which the writer does not speak.
    pub(crate) fn from_config(c: &rustis::client::Config) -> Option<Self> {
        let ServerConfig::Standalone { host, port } = &c.server else {
            return None;
        };
        Some(Self {
            host: host.clone(),
            port: *port,
            username: c.username.clone(),
            password: c.password.clone(),
            database: c.database,
        })
    }
}

/// `XADD`s encoded one after another into one buffer.
#[derive(Default)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    /// `<stream> MAXLEN ~ <max_len> *`, the same in every `XADD`.
    prefix: Vec<u8>,
    /// One command's fields, encoded before the array header (whose count
    /// depends on the event's optional fields).
    fields: Vec<u8>,
    commands: usize,
}

impl Batch {
    pub(crate) fn new(max_len: u64) -> Self {
        let mut prefix = Vec::new();
        bulk(&mut prefix, STREAM_KEY.as_bytes());
        bulk(&mut prefix, b"MAXLEN");
        bulk(&mut prefix, b"~");
        bulk(&mut prefix, itoa::Buffer::new().format(max_len).as_bytes());
        bulk(&mut prefix, b"*");
        Self {
            prefix,
            ..Self::default()
        }
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.commands = 0;
    }

    /// Appends one command of plain arguments.
    fn command(&mut self, args: &[&[u8]]) {
        header(&mut self.buf, b'*', args.len());
        for a in args {
            bulk(&mut self.buf, a);
        }
        self.commands += 1;
    }

    /// Appends `XADD <stream> MAXLEN ~ <max_len> * <field> <value>…`.
    pub(crate) fn xadd(&mut self, event: &Event) {
        self.fields.clear();
        let fields = event.fold_fields(0usize, |n, k, v| {
            bulk(&mut self.fields, k.as_bytes());
            bulk(&mut self.fields, v.as_bytes());
            n + 1
        });
        header(&mut self.buf, b'*', 1 + 5 + 2 * fields);
        bulk(&mut self.buf, b"XADD");
        self.buf.extend_from_slice(&self.prefix);
        self.buf.extend_from_slice(&self.fields);
        self.commands += 1;
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    header(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// The commands of a batch the server answered with an error.
#[derive(Debug, Default)]
pub(crate) struct Refused {
    pub(crate) count: usize,
    pub(crate) first: Option<String>,
}

/// A connection to the log's Redis, authenticated and on its database.
pub(crate) struct Connection {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Connection {
    pub(crate) async fn open(t: &Target) -> Result<Self, String> {
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut c = Self {
            stream: BufReader::new(tcp),
            line: Vec::with_capacity(64),
        };
        let mut hello = Batch::default();
        match (&t.username, &t.password) {
            (Some(u), Some(p)) => hello.command(&[b"AUTH", u.as_bytes(), p.as_bytes()]),
            (None, Some(p)) => hello.command(&[b"AUTH", p.as_bytes()]),
            _ => {}
        }
        if t.database != 0 {
            hello.command(&[b"SELECT", t.database.to_string().as_bytes()]);
        }
        hello.command(&[b"CLIENT", b"SETNAME", b"mlmesh-event-log"]);
        // The server's own words for a refused AUTH, never the password.
        match c.send(&hello).await?.first {
            None => Ok(c),
            Some(e) => Err(format!("connection setup refused: {e}")),
        }
    }

    /// Writes the batch and reads one reply per command; returns how many
    /// the server refused (e.g. a wrongly typed stream) and the first
    /// refusal's message. An `Err` means the connection is no longer usable.
    pub(crate) async fn send(&mut self, batch: &Batch) -> Result<Refused, String> {
        self.stream
            .get_mut()
            .write_all(&batch.buf)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut refused = Refused::default();
        for _ in 0..batch.commands {
            if let Some(e) = self.reply().await? {
                refused.count += 1;
                refused.first.get_or_insert(e);
            }
        }
        Ok(refused)
    }

    /// One reply: `None` for any success, the message of an error reply.
    async fn reply(&mut self) -> Result<Option<String>, String> {
        self.read_line().await?;
        let (kind, rest) = self.line.split_first().ok_or("empty reply line")?;
        match kind {
            b'+' | b':' => Ok(None),
            b'-' => Ok(Some(String::from_utf8_lossy(rest).into_owned())),
            b'$' => {
                let len: i64 = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad bulk length")?;
                if len >= 0 {
                    // The entry id and its CRLF (an id is one line).
                    self.read_line().await?;
                    if self.line.len() != len as usize {
                        return Err("bulk reply of the wrong length".to_owned());
                    }
                }
                Ok(None)
            }
            other => Err(format!("unexpected reply type {:?}", char::from(*other))),
        }
    }

    /// The next CRLF-terminated line, without it.
    async fn read_line(&mut self) -> Result<(), String> {
        self.line.clear();
        let n = self
            .stream
            .read_until(b'\n', &mut self.line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 || !self.line.ends_with(b"\r\n") {
            return Err("connection closed".to_owned());
        }
        self.line.truncate(self.line.len() - 2);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xadd_is_one_resp_array_of_bulk_strings() {
        let e = crate::event::sample_prediction();
        let mut b = Batch::new(1000);
        b.xadd(&e);
        let text = String::from_utf8(b.buf.clone()).unwrap();
        let fields = e.fields();
        let mut want = format!(
            "*{}\r\n$4\r\nXADD\r\n${}\r\n{STREAM_KEY}\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$4\r\n1000\r\n$1\r\n*\r\n",
            6 + 2 * fields.len(),
            STREAM_KEY.len()
        );
        for (k, v) in &fields {
            want += &format!("${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len());
        }
        assert_eq!(text, want);
        b.xadd(&e);
        assert_eq!((b.commands, b.buf.len()), (2, 2 * want.len()));
        b.clear();
        assert_eq!((b.commands, b.buf.len()), (0, 0));
    }
}
