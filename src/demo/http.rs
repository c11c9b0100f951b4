//! The little HTTP/1.1 the demo speaks over its mTLS connections: one request, one response,
//! `Connection: close`. Hand-rolled on purpose (a request head and a status line are all it needs);
//! everything here is bounded, never panics, and treats the peer's bytes as untrusted.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The ALPN protocol both sides offer. A client offering no ALPN at all is accepted too.
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Largest request head the server reads; a larger one gets a 431.
pub(crate) const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Largest response the client reads (head and body): the demo server's JSON is a few hundred bytes.
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;

// === Server side: the request ===

/// What the server needs from a request. The path is only reported; every path gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    pub target: String,
}

impl Request {
    /// HEAD gets the headers of the response and no body.
    pub(crate) fn wants_body(&self) -> bool {
        self.method != "HEAD"
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The client closed (cleanly) before sending a single byte.
    Closed,
    /// The connection ended, or failed, part-way through the head.
    Io(std::io::Error),
    /// More than [`MAX_REQUEST_HEAD`] bytes without the blank line that ends a head.
    TooLarge,
}

/// Read up to and including the blank line that ends a request head (bytes after it, a body or a
/// pipelined request, are read too and ignored: the connection closes after one response).
pub(crate) async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0_u8; 2048];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) if head.is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of the request head",
                )));
            }
            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) => return Err(HeadError::Io(e)),
        }
        if let Some(end) = head_end(&head) {
            if end > MAX_REQUEST_HEAD {
                return Err(HeadError::TooLarge);
            }
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where a head ends: just after the first empty line (CRLF CRLF, or bare LF LF from a hand-typed
/// request). Leading empty lines, which RFC 9112 lets a server skip, do not count.
fn head_end(buf: &[u8]) -> Option<usize> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let mut line_start = start;
    for (i, &b) in buf.iter().enumerate().skip(start) {
        if b == b'\n' {
            let line = buf.get(line_start..i).unwrap_or_default();
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// `tchar` of RFC 9110: what a method and a header name are made of.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parse a request head as [`read_request_head`] returns it. The error is the reason for a 400.
pub(crate) fn parse_request(head: &[u8]) -> Result<Request, String> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines.next().unwrap_or_default();
    let text = std::str::from_utf8(request_line)
        .ok()
        .filter(|t| t.chars().all(|c| c.is_ascii_graphic() || c == ' '))
        .ok_or("the request line is not printable ASCII")?;
    let parts: Vec<&str> = text.split(' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(format!(
            "the request line {text:?} is not METHOD TARGET HTTP/1.1"
        ));
    };
    if !is_token(method.as_bytes()) {
        return Err(format!("invalid method {method:?}"));
    }
    if target.is_empty() {
        return Err("empty request target".into());
    }
    let http11 = match *version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        other => return Err(format!("unsupported protocol version {other:?}")),
    };

    let mut hosts = 0;
    for line in lines.take_while(|l| !l.is_empty()) {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Err("obsolete header line folding".into());
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("a header line without a colon")?;
        let (name, value) = (
            line.get(..colon).unwrap_or_default(),
            line.get(colon + 1..).unwrap_or_default(),
        );
        if !is_token(name) {
            return Err(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        if value.iter().any(|&b| b != b'\t' && b.is_ascii_control()) {
            return Err(format!(
                "control characters in header {}",
                String::from_utf8_lossy(name)
            ));
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    if http11 && hosts != 1 {
        return Err(format!(
            "an HTTP/1.1 request needs exactly one Host header, not {hosts}"
        ));
    }
    Ok(Request {
        method: (*method).to_owned(),
        target: (*target).to_owned(),
    })
}

/// A JSON object of string fields, in the order given (serde_json's map would sort the keys, and
/// the identities read best first).
pub(crate) fn json_object(fields: &[(&str, &str)]) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|(key, value)| {
            format!(
                "{}:{}",
                serde_json::Value::from(*key),
                serde_json::Value::from(*value)
            )
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// A complete `Connection: close` response carrying a JSON body (without it for HEAD: the headers
/// still say how long it would have been).
pub(crate) fn json_response(status: u16, body: &str, with_body: bool) -> Vec<u8> {
    let body = format!("{body}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "",
    }
}

// === Client side: the response ===

/// The request the demo client sends.
pub(crate) fn request(host: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tlsid-demo\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Try to parse a response from what has been read so far. `Ok(None)`: incomplete, read more.
/// `eof`: nothing more will come (the server closed cleanly), so a body without a length ends here.
pub(crate) fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    if buf.len() > MAX_RESPONSE {
        return Err(format!("response larger than {} KiB", MAX_RESPONSE / 1024));
    }
    if !buf.is_empty() && !b"HTTP/".starts_with(buf.get(..5).unwrap_or(buf)) {
        let first = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        return Err(format!(
            "not an HTTP response: {:?}",
            super::identity::printable_up_to(&String::from_utf8_lossy(first), 80)
        ));
    }
    let Some(end) = head_end(buf) else {
        return if eof {
            Err("the response ended before its head was complete".into())
        } else {
            Ok(None)
        };
    };
    let (head, rest) = buf.split_at(end);
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") || code.len() != 3 {
        return Err(format!("invalid status line {status_line:?}"));
    }
    let status: u16 = code
        .parse()
        .ok()
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("invalid status line {status_line:?}"))?;

    let (mut length, mut chunked) = (None::<usize>, false);
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err("a response header line without a colon".into());
        };
        let name = line.get(..colon).unwrap_or_default();
        let value = String::from_utf8_lossy(line.get(colon + 1..).unwrap_or_default());
        let value = value.trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| format!("invalid Content-Length {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }

    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Some(Vec::new())
    } else if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).map(<[u8]>::to_vec)
    } else if eof {
        Some(rest.to_vec())
    } else {
        None
    };
    match body {
        Some(body) => Ok(Some(Response { status, body })),
        None if eof => Err(match length {
            Some(n) => format!("truncated body: {} of {n} bytes", rest.len()),
            None => "truncated chunked body".into(),
        }),
        None => Ok(None),
    }
}

/// Decode a chunked body; `Ok(None)` while the last chunk has not arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let size_line = String::from_utf8_lossy(rest.get(..nl).unwrap_or_default());
        let size_text = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("invalid chunk size {size_text:?}"))?;
        rest = rest.get(nl + 1..).unwrap_or_default();
        if size == 0 {
            // Trailers, then the final empty line.
            return Ok(head_end_or_empty(rest).then_some(body));
        }
        let Some(chunk) = rest.get(..size) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        rest = rest.get(size..).unwrap_or_default();
        if rest.len() < 2 {
            return Ok(None);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .ok_or("a chunk not followed by CRLF")?;
    }
}

/// Whether the trailer section after the last chunk is complete.
fn head_end_or_empty(rest: &[u8]) -> bool {
    rest.starts_with(b"\r\n") || rest.starts_with(b"\n") || head_end(rest).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let ok = [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/"),
            (
                "GET /x?y=1 HTTP/1.1\r\nHost: a:8443\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
                "GET",
                "/x?y=1",
            ),
            ("\r\nHEAD / HTTP/1.1\nHost: a\n\n", "HEAD", "/"),
            ("GET / HTTP/1.0\r\n\r\n", "GET", "/"),
            (
                "POST /p HTTP/1.1\r\nhost:a\r\nX: \u{e9}\t\r\n\r\n",
                "POST",
                "/p",
            ),
        ];
        for (head, method, target) in ok {
            let req = parse_request(head.as_bytes()).unwrap_or_else(|e| panic!("{head:?}: {e}"));
            assert_eq!((req.method.as_str(), req.target.as_str()), (method, target));
        }
        let bad = [
            ("", "not METHOD TARGET"),
            ("hello\r\n\r\n", "not METHOD TARGET"),
            ("GET /\r\n\r\n", "not METHOD TARGET"),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "not METHOD TARGET"),
            (
                "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                "unsupported protocol version",
            ),
            ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", "invalid method"),
            ("GET / HTTP/1.1\r\n\r\n", "exactly one Host header, not 0"),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "not 2"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
                "without a colon",
            ),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", "invalid header name"),
            ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "folding"),
            (
                "GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n",
                "control characters",
            ),
            (
                "GET /\x1b HTTP/1.1\r\nHost: a\r\n\r\n",
                "not printable ASCII",
            ),
            (
                "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
                "not printable ASCII",
            ),
        ];
        for (head, why) in bad {
            let err = parse_request(head.as_bytes()).expect_err(head);
            assert!(err.contains(why), "{head:?}: {err}");
        }
    }

    #[test]
    fn head_ends() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[tokio::test]
    async fn reading_a_head_is_bounded() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nignored body";
        let head = read_request_head(&mut input).await.unwrap();
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut empty: &[u8] = b"";
        assert!(matches!(
            read_request_head(&mut empty).await,
            Err(HeadError::Closed)
        ));
        let mut cut: &[u8] = b"GET / HTTP/1.1\r\nHo";
        assert!(matches!(
            read_request_head(&mut cut).await,
            Err(HeadError::Io(_))
        ));
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        assert!(matches!(
            read_request_head(&mut huge.as_bytes()).await,
            Err(HeadError::TooLarge)
        ));
    }

    #[test]
    fn responses_round_trip() {
        let body = json_object(&[("peer", "spiffe://a/\"b\"\n"), ("decision", "allowed")]);
        assert_eq!(
            body,
            r#"{"peer":"spiffe://a/\"b\"\n","decision":"allowed"}"#
        );
        let body = json_object(&[("decision", "allowed")]);
        let bytes = json_response(200, &body, true);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let parsed = parse_response(&bytes, false).unwrap().unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.body, b"{\"decision\":\"allowed\"}\n");
        // Incomplete until the whole body is there, whether or not the server closes.
        assert_eq!(parse_response(&bytes[..bytes.len() - 3], false), Ok(None));
        assert!(parse_response(&bytes[..bytes.len() - 3], true).is_err());

        let head = json_response(403, &body, false);
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n") && text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn foreign_responses() {
        // (what the server sent, whether it closed, the expected (status, body) or error)
        type Want = Result<Option<(u16, &'static [u8])>, &'static str>;
        let cases: [(&[u8], bool, Want); 12] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n", false, Ok(Some((200, b"hello\n")))),
            (b"HTTP/1.0 200 OK\r\n\r\nuntil close", false, Ok(None)),
            (b"HTTP/1.0 200 OK\r\n\r\nuntil close", true, Ok(Some((200, b"until close")))),
            (b"HTTP/1.1 200\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n", false, Ok(Some((200, b"hello!")))),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", false, Ok(None)),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", true, Err("truncated chunked body")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, Err("invalid chunk size")),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, Ok(Some((204, b"")))),
            (b"hello spiffe://x from go\n", true, Err("not an HTTP response")),
            (b"HTTP/1.1 2000 OK\r\n\r\n", false, Err("invalid status line")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", false, Err("conflicting")),
            (b"HTT", false, Ok(None)),
        ];
        for (input, eof, want) in cases {
            let got = parse_response(input, eof);
            let label = String::from_utf8_lossy(input);
            match want {
                Ok(Some((status, body))) => {
                    let r = got.unwrap_or_else(|e| panic!("{label:?}: {e}")).unwrap();
                    assert_eq!((r.status, r.body.as_slice()), (status, body), "{label:?}");
                }
                Ok(None) => assert_eq!(got, Ok(None), "{label:?}"),
                Err(why) => {
                    let err = got.expect_err(&label);
                    assert!(err.contains(why), "{label:?}: {err}");
                }
            }
        }
        assert!(parse_response(&vec![b'H'; MAX_RESPONSE + 1], false).is_err());
    }
}
