//! A Redis connection for the state store's calls: the `redis` crate's commands and scripts
//! over a plain TCP or Unix socket, with replies read by a small RESP2 reader of its own.
//!
//! The crate's reader (a general parser combinator) cost a replica about 16 us for each
//! state script's answer, some 6% of its CPU per scored request with two replicas; with this
//! one a replica's CPU per answer fell by 5-16 us (benches/README, "Session 23").
//! Everything else (the commands as the crate packs them, script loading, errors and their
//! kinds) stays the crate's: this type only implements [`redis::ConnectionLike`]. Addresses
//! it does not handle (TLS, RESP3) keep the crate's own connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};

/// Nested arrays deeper than this are refused (no state script answer comes close).
const MAX_DEPTH: usize = 32;
/// The largest bulk string Redis sends (its `proto-max-bulk-len` default).
const MAX_BULK: usize = 512 << 20;

enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Socket::Unix(s) => s.flush(),
        }
    }
}

/// A connection to one Redis server (RESP2), every read and write bounded by a timeout.
pub(crate) struct Plain {
    reader: BufReader<Socket>,
    db: i64,
    /// False once a call failed: the stream may be mid-reply, so it is not used again.
    open: bool,
    line: Vec<u8>,
}

fn protocol(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::ParseError,
        "bad reply from Redis",
        what.to_string(),
    ))
}

impl Plain {
    /// Connects to `info` and makes its handshake (`AUTH`, `SELECT`); `None` when the
    /// address or protocol is not one this reader serves (the caller uses the crate's).
    pub(crate) fn connect(info: &ConnectionInfo, timeout: Duration) -> RedisResult<Option<Self>> {
        if info.redis.protocol != redis::ProtocolVersion::RESP2 {
            return Ok(None);
        }
        let socket = match &info.addr {
            ConnectionAddr::Tcp(host, port) => {
                let mut last = None;
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match (found, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(e.into()),
                    (None, None) => {
                        return Err(RedisError::from((
                            ErrorKind::InvalidClientConfig,
                            "the Redis host resolves to no address",
                        )))
                    }
                };
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Socket::Tcp(s)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                let s = std::os::unix::net::UnixStream::connect(path)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Socket::Unix(s)
            }
            _ => return Ok(None),
        };
        let mut c = Plain {
            reader: BufReader::with_capacity(16 << 10, socket),
            db: info.redis.db,
            open: true,
            line: Vec::with_capacity(64),
        };
        if let Some(password) = &info.redis.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &info.redis.username {
                auth.arg(user);
            }
            auth.arg(password).exec(&mut c)?;
        }
        if info.redis.db != 0 {
            redis::cmd("SELECT").arg(info.redis.db).exec(&mut c)?;
        }
        Ok(Some(c))
    }

    /// One line of the reply, without its CRLF, into `self.line`.
    fn read_line(&mut self) -> RedisResult<()> {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line)?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if !self.line.ends_with(b"\r\n") {
            return Err(protocol("a line without CRLF"));
        }
        self.line.truncate(self.line.len() - 2);
        Ok(())
    }

    fn number(&self) -> RedisResult<i64> {
        std::str::from_utf8(&self.line[1..])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol("a length or integer that is not a number"))
    }

    /// One reply (RESP2: simple string, error, integer, bulk string, array).
    fn value(&mut self, depth: usize) -> RedisResult<Value> {
        if depth > MAX_DEPTH {
            return Err(protocol("arrays nested too deep"));
        }
        self.read_line()?;
        match self.line.first() {
            Some(b'+') => {
                if &self.line[1..] == b"OK" {
                    Ok(Value::Okay)
                } else {
                    Ok(Value::SimpleString(
                        String::from_utf8_lossy(&self.line[1..]).into_owned(),
                    ))
                }
            }
            Some(b':') => Ok(Value::Int(self.number()?)),
            Some(b'$') => {
                let n = self.number()?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > MAX_BULK {
                    return Err(protocol("a bulk string longer than Redis sends"));
                }
                let mut bulk = vec![0; n + 2];
                self.reader.read_exact(&mut bulk)?;
                if !bulk.ends_with(b"\r\n") {
                    return Err(protocol("a bulk string without CRLF"));
                }
                bulk.truncate(n);
                Ok(Value::BulkString(bulk))
            }
            Some(b'*') => {
                let n = self.number()?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            Some(b'-') => {
                // Errors are rare: the crate reads them, so that their kinds (NOSCRIPT,
                // READONLY, ...) are what the rest of it expects.
                let mut whole = std::mem::take(&mut self.line);
                whole.extend_from_slice(b"\r\n");
                let got = redis::parse_redis_value(&whole);
                self.line = whole;
                got
            }
            _ => Err(protocol("an unknown reply type")),
        }
    }

    /// Runs `f`, closing the connection for good if it fails.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> RedisResult<T>) -> RedisResult<T> {
        if !self.open {
            return Err(std::io::Error::from(std::io::ErrorKind::NotConnected).into());
        }
        let out = f(self);
        if out.is_err() {
            self.open = false;
        }
        out
    }
}

impl redis::ConnectionLike for Plain {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.guarded(|c| {
            c.reader.get_mut().write_all(cmd)?;
            c.value(0)
        })
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        // Every reply is read (the stream stays in step), whatever some of them say: a
        // server's error among them leaves the connection usable.
        let replies = self.guarded(|c| {
            c.reader.get_mut().write_all(cmd)?;
            (0..offset + count)
                .map(|_| c.value(0))
                .collect::<RedisResult<Vec<_>>>()
        })?;
        let mut out = Vec::with_capacity(count);
        let mut first_err: Option<RedisError> = None;
        for (i, v) in replies.into_iter().enumerate() {
            match v {
                Value::ServerError(e) if i < offset => {
                    first_err.get_or_insert_with(|| e.into());
                }
                v if i >= offset => out.push(v),
                _ => {}
            }
        }
        first_err.map_or(Ok(out), Err)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A connection and its server's end.
    fn paired() -> std::io::Result<(Plain, std::os::unix::net::UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        let c = Plain {
            reader: BufReader::new(Socket::Unix(a)),
            db: 0,
            open: true,
            line: Vec::new(),
        };
        Ok((c, b))
    }

    /// A connection whose server sent `bytes`, then closed.
    fn fed(bytes: &[u8]) -> std::io::Result<Plain> {
        let (c, mut server) = paired()?;
        server.write_all(bytes)?;
        Ok(c)
    }

    /// The replies in `bytes`, up to its end.
    fn reading(bytes: &[u8]) -> RedisResult<Vec<Value>> {
        let mut c = fed(bytes)?;
        let mut out = Vec::new();
        loop {
            match c.value(0) {
                Ok(v) => out.push(v),
                Err(e) if e.is_connection_dropped() || e.is_io_error() => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    #[test]
    fn replies_read_as_the_crate_reads_them() {
        let replies: [&[u8]; 12] = [
            b"+OK\r\n",
            b"+PONG\r\n",
            b":-42\r\n",
            b"$5\r\nab\r\nc\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*3\r\n*2\r\n$1\r\n=\r\n$3\r\n\x00\x01\x02\r\n*1\r\n:7\r\n*1\r\n$1\r\n0\r\n",
            b"*2\r\n$0\r\n\r\n*0\r\n",
            b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
            b"-READONLY You can't write against a read only replica.\r\n",
        ];
        let got = reading(&replies.concat()).unwrap();
        let want: Vec<Value> = replies
            .iter()
            .map(|r| redis::parse_redis_value(r).unwrap())
            .collect();
        assert_eq!(got, want);
        let kind = |v: &Value| match v {
            Value::ServerError(e) => RedisError::from(e.clone()).kind(),
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(&got[10]), ErrorKind::NoScriptError);
        assert_eq!(kind(&got[11]), ErrorKind::ReadOnly);
    }

    #[test]
    fn a_pipeline_reads_every_reply_and_a_server_error_keeps_the_connection() {
        use redis::ConnectionLike;
        // The server's end stays open: the calls' writes go somewhere.
        let (mut c, mut server) = paired().unwrap();
        server
            .write_all(b":1\r\n:2\r\n-ERR wrong\r\n:5\r\n+PONG\r\n")
            .unwrap();
        let both = c.req_packed_commands(b"", 0, 2).unwrap();
        assert_eq!(both, vec![Value::Int(1), Value::Int(2)]);
        // An error among the replies skipped (a transaction's `MULTI` part): the call fails
        // with it, every reply is read, and the connection stays in step.
        let e = c.req_packed_commands(b"", 1, 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResponseError);
        assert!(c.is_open());
        assert_eq!(
            c.req_packed_command(b"").unwrap(),
            Value::SimpleString("PONG".into())
        );
    }

    #[test]
    fn a_broken_reply_is_an_error_not_a_panic() {
        for bad in [
            &b"$5\r\nab\r\n"[..],
            b"*2\r\n:1\r\n",
            b"?what\r\n",
            b":12a\r\n",
            b"$3\r\nabcd\r\n",
            b"+no end",
            b"$99999999999\r\n",
        ] {
            assert!(
                fed(bad).unwrap().value(0).is_err(),
                "{:?} read as a reply",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
