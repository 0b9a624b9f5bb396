//! The load generator's HTTP/1.1 client: blocking sockets, one 1 MiB read buffer per
//! connection, bodies handed to a sink slice by slice (discarded, compared or kept),
//! keep-alive, Content-Length, chunked and read-to-close bodies. Much cheaper per byte
//! and per request than the servers it measures, so they are what the figures show.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const BUF: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);

/// What a response said, minus its body.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names; only filled when asked for.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    stream: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// The server said it closes the connection (or the body ran to EOF).
    closed: bool,
}

impl Conn {
    pub fn connect(addr: &str) -> io::Result<Conn> {
        let sock: SocketAddr = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            addr: sock,
            host: addr.to_owned(),
            stream,
            buf: vec![0u8; BUF].into_boxed_slice(),
            pos: 0,
            len: 0,
            closed: false,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn reconnect(&mut self) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        self.stream = stream;
        self.pos = 0;
        self.len = 0;
        self.closed = false;
        Ok(())
    }

    /// Sends a request (reconnecting first if the server closed the connection) and
    /// reads the response; its body goes to `sink`. `headers` captures the response
    /// headers into [`Response::headers`].
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: Option<&[u8]>,
        headers: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response> {
        if self.closed {
            self.reconnect()?;
        }
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in extra {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        if let Some(b) = body {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        } else if matches!(method, "PUT" | "POST" | "PATCH") {
            head.push_str("Content-Length: 0\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())?;
        if let Some(b) = body {
            self.stream.write_all(b)?;
        }
        self.read_response(method == "HEAD", headers, sink)
    }

    /// GET with the body discarded; returns (status, body length).
    pub fn get_discard(&mut self, path: &str, extra: &[(&str, &str)]) -> io::Result<(u16, u64)> {
        let r = self.request("GET", path, extra, None, false, &mut |_| {})?;
        Ok((r.status, r.body_len))
    }

    /// GET keeping the body.
    pub fn get_bytes(
        &mut self,
        path: &str,
        extra: &[(&str, &str)],
    ) -> io::Result<(Response, Vec<u8>)> {
        let mut out = Vec::new();
        let r = self.request("GET", path, extra, None, true, &mut |b| {
            out.extend_from_slice(b)
        })?;
        Ok((r, out))
    }

    /// Makes sure at least one unread byte is buffered (compacting if the buffer is full).
    fn fill(&mut self) -> io::Result<()> {
        if self.pos < self.len {
            return Ok(());
        }
        self.pos = 0;
        self.len = self.stream.read(&mut self.buf)?;
        if self.len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        Ok(())
    }

    /// Reads more bytes after the buffered ones (for a header or line that spans reads).
    fn fill_more(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head over 1 MiB",
            ));
        }
        let n = self.stream.read(&mut self.buf[self.len..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        self.len += n;
        Ok(())
    }

    /// The next line (without CRLF), as an owned string.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..self.len], b"\r\n") {
                let s = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(s);
            }
            self.fill_more()?;
        }
    }

    fn body_exact(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        while n > 0 {
            self.fill()?;
            let take = ((self.len - self.pos) as u64).min(n) as usize;
            sink(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    fn read_response(
        &mut self,
        head_only: bool,
        want_headers: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response> {
        // The head.
        let end = loop {
            if let Some(i) = find(&self.buf[self.pos..self.len], b"\r\n\r\n") {
                break self.pos + i;
            }
            self.fill_more()?;
        };
        let head = std::str::from_utf8(&self.buf[self.pos..end])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "response head not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        let mut resp = Response {
            status,
            ..Response::default()
        };
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = status_line.starts_with("HTTP/1.0");
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
            if want_headers {
                resp.headers.push((k.to_ascii_lowercase(), v.to_owned()));
            }
        }
        self.pos = end + 4;

        // The body.
        let mut counted = 0u64;
        let mut count = |b: &[u8]| {
            counted += b.len() as u64;
            sink(b)
        };
        if head_only || status < 200 || status == 204 || status == 304 {
            // No body.
        } else if chunked {
            loop {
                let line = self.line()?;
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_hex, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {line:?}"),
                    )
                })?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                self.body_exact(size, &mut count)?;
                if !self.line()?.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunk not followed by CRLF",
                    ));
                }
            }
        } else if let Some(n) = content_length {
            self.body_exact(n, &mut count)?;
        } else {
            // Until the server closes the connection.
            loop {
                if self.pos == self.len {
                    self.pos = 0;
                    self.len = self.stream.read(&mut self.buf)?;
                    if self.len == 0 {
                        break;
                    }
                }
                count(&self.buf[self.pos..self.len]);
                self.pos = self.len;
            }
            close = true;
        }
        resp.body_len = counted;
        if close {
            self.closed = true;
        }
        Ok(resp)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Compares a body, slice by slice, with the bytes it should have.
pub struct Verify<'a> {
    expected: &'a [u8],
    offset: usize,
    ok: bool,
}

impl<'a> Verify<'a> {
    pub fn new(expected: &'a [u8]) -> Verify<'a> {
        Verify {
            expected,
            offset: 0,
            ok: true,
        }
    }

    pub fn feed(&mut self, b: &[u8]) {
        let end = self.offset + b.len();
        if end > self.expected.len() || self.expected[self.offset..end] != *b {
            self.ok = false;
        }
        self.offset = end;
    }

    /// Every byte matched and none is missing.
    pub fn complete(&self) -> bool {
        self.ok && self.offset == self.expected.len()
    }
}
