//! XEP-0363 HTTP File Upload against a real server: slots over XMPP, PUT and GET over
//! HTTP (a small HTTP/1.1 client over raw TCP, so bodies can be streamed and requests
//! made wrong on purpose), quotas, ranges, signatures, purging, expiry and the audit log.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use herald_core::ns;
use herald_server::ext::upload::{self, UrlKind};
use herald_storage::{FileQuota, FileState, NewFileSlot};
use herald_xml::Element;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UPLOAD: &str = "upload.example.test";
const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn http_addr(server: &TestServer) -> SocketAddr {
    server.running.as_ref().expect("running").bound.http[0]
}

/// The path part of one of the server's URLs. The http and https listeners serve the same
/// routes; the tests talk plain HTTP.
fn path_of(url: &str) -> String {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .expect("http(s) URL");
    rest[rest.find('/').expect("path")..].to_string()
}

async fn send_head(s: &mut TcpStream, method: &str, path: &str, headers: &[(&str, String)]) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
}

/// Reads the status line and headers; returns them and any body bytes read with them.
async fn read_head(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(n > 0, "connection closed before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers, buf[end + 4..].to_vec())
}

async fn read_to_end(s: &mut TcpStream, mut body: Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut body))
        .await
        .expect("body in time")
        .expect("read body");
    body
}

/// One request with a fixed body (sent with Content-Length unless told otherwise).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    s.set_nodelay(true).unwrap();
    let chunked = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() && !chunked {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    // Head and body in one write: a refusal then never races the body into a reset.
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let _ = s.write_all(&bytes).await;
    let (status, headers, rest) = read_head(&mut s).await;
    let body = read_to_end(&mut s, rest).await;
    let body = if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        dechunk(&body)
    } else {
        body
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let len = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + len]);
        b = &b[i + 2 + len + 2..];
    }
}

/// A chunked request body (no Content-Length): what a client that does not know the size
/// up front sends.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

/// Deterministic test content.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// XMPP helpers

struct Slot {
    put: String,
    get: String,
}

fn request_xml(name: &str, size: u64, ct: Option<&str>) -> String {
    let ct = ct
        .map(|c| format!(" content-type='{c}'"))
        .unwrap_or_default();
    format!("<request xmlns='{NS_UPLOAD}' filename='{name}' size='{size}'{ct}/>")
}

async fn request_slot(c: &mut Client, name: &str, size: u64, ct: Option<&str>) -> Element {
    c.iq("get", Some(UPLOAD), &request_xml(name, size, ct))
        .await
}

async fn slot(c: &mut Client, name: &str, size: u64, ct: Option<&str>) -> Slot {
    let r = request_slot(c, name, size, ct).await;
    assert_eq!(r.attr("type"), Some("result"), "slot: {}", r.to_xml());
    let s = r.child("slot", NS_UPLOAD).expect("slot");
    let put = s
        .child("put", NS_UPLOAD)
        .and_then(|p| p.attr("url"))
        .expect("put url");
    let get = s
        .child("get", NS_UPLOAD)
        .and_then(|p| p.attr("url"))
        .expect("get url");
    Slot {
        put: put.to_string(),
        get: get.to_string(),
    }
}

/// The slot id in one of our URLs (`/upload/<id>.<expiry>.<sig>/<name>`).
fn id_of(url: &str) -> String {
    let p = path_of(url);
    let token = p.trim_start_matches("/upload/").split('/').next().unwrap();
    token.split('.').next().unwrap().to_string()
}

fn error_text(el: &Element) -> String {
    el.child("error", ns::CLIENT)
        .and_then(|e| e.child("text", ns::STANZAS))
        .map(|t| t.text())
        .unwrap_or_default()
}

fn tmp_files(server: &TestServer) -> usize {
    std::fs::read_dir(server.dir.path().join("data/uploads/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn discovery_slot_put_get_and_audit_record() {
    // A reverse proxy on loopback, trusted to forward client addresses (see the audit).
    let server = TestServer::with_config("[http]\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "phone").await;

    let items = a
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<query xmlns='{}'/>", ns::DISCO_ITEMS),
        )
        .await;
    let q = items.child("query", ns::DISCO_ITEMS).expect("items");
    assert!(
        q.elements().any(|i| i.attr("jid") == Some(UPLOAD)),
        "{}",
        items.to_xml()
    );
    let info = a
        .iq(
            "get",
            Some(UPLOAD),
            &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
        )
        .await;
    let q = info.child("query", ns::DISCO_INFO).expect("info");
    let ident = q.child("identity", ns::DISCO_INFO).expect("identity");
    assert_eq!(
        (ident.attr("category"), ident.attr("type")),
        (Some("store"), Some("file"))
    );
    assert!(q
        .elements()
        .any(|f| f.name == "feature" && f.attr("var") == Some(NS_UPLOAD)));
    let form = q.child("x", ns::DATA_FORMS).expect("max-file-size form");
    let max = form
        .elements()
        .find(|f| f.attr("var") == Some("max-file-size"))
        .and_then(|f| f.child("value", ns::DATA_FORMS))
        .map(|v| v.text());
    assert_eq!(max.as_deref(), Some("104857600"));

    let data = content(5000, 7);
    let s = slot(&mut a, "Grüße &amp; hello.txt", 5000, Some("text/plain")).await;
    let base = &server.running.as_ref().unwrap().server.http_base;
    assert!(s.put.starts_with(&format!("{base}/upload/")), "{}", s.put);
    assert!(
        s.get.ends_with("/Gr%C3%BC%C3%9Fe%20%26%20hello.txt"),
        "{}",
        s.get
    );
    assert_ne!(s.put, s.get);
    let addr = http_addr(&server);

    // A GET before the upload: nothing there yet.
    let r = http(addr, "GET", &path_of(&s.get), &[], b"").await;
    assert_eq!(r.status, 404);

    let r = http(
        addr,
        "PUT",
        &path_of(&s.put),
        &[("Content-Type", "text/plain".into())],
        &data,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    let r = http(addr, "GET", &path_of(&s.get), &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data, "the same bytes come back");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("5000"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let disp = r.header("content-disposition").expect("disposition");
    assert!(
        disp.starts_with("inline;") && disp.contains("UTF-8''Gr%C3%BC%C3%9Fe%20%26%20hello.txt"),
        "{disp}"
    );
    let hash = hex(&Sha256::digest(&data));
    assert_eq!(r.header("etag"), Some(format!("\"{hash}\"").as_str()));

    // The URL as handed out: over TLS on the https listener.
    assert!(s.get.starts_with("https://"), "{}", s.get);
    // Through a trusted reverse proxy on loopback: the audit records the client it
    // forwards for.
    let r = web::http_request(
        server.https,
        true,
        "GET",
        &path_of(&s.get),
        &[("X-Forwarded-For", "198.51.100.7")],
        b"",
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (200, data.as_slice()));

    let r = http(addr, "HEAD", &path_of(&s.get), &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5000"));
    assert!(r.body.is_empty());

    let r = http(
        addr,
        "OPTIONS",
        &path_of(&s.put),
        &[
            ("Origin", "https://web.example".into()),
            ("Access-Control-Request-Method", "PUT".into()),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("PUT")));

    // One upload per slot.
    let r = http(
        addr,
        "PUT",
        &path_of(&s.put),
        &[("Content-Type", "text/plain".into())],
        &data,
    )
    .await;
    assert_eq!(r.status, 409);

    let rec = server
        .store
        .file(&id_of(&s.get))
        .await
        .unwrap()
        .expect("record");
    assert_eq!(rec.uploader, "alice@example.test");
    assert_eq!(rec.file_name, "Grüße & hello.txt");
    assert_eq!(rec.size, 5000);
    assert_eq!(rec.content_type.as_deref(), Some("text/plain"));
    assert_eq!(rec.state, FileState::Uploaded);
    assert_eq!(rec.sha256.as_deref(), Some(hash.as_str()));
    assert!(
        rec.upload_addr
            .as_deref()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{:?}",
        rec.upload_addr
    );
    assert_eq!(rec.download_count, 2, "GETs count, HEAD does not");
    let mut from: Vec<&str> = rec
        .downloads
        .iter()
        .map(|d| d.client_addr.as_str())
        .collect();
    from.sort();
    assert_eq!(from.len(), 2);
    assert!(from[0].starts_with("127.0.0.1:"), "{from:?}");
    assert_eq!(from[1], "198.51.100.7:0", "{from:?}");
    assert!(
        rec.expires_micros.is_some(),
        "expires after 30 days by default"
    );
    assert_eq!(tmp_files(&server), 0);
}

#[tokio::test]
async fn a_50_mb_file_streams_both_ways() {
    let server = TestServer::with_config("[upload]\nmax_file_size = 67108864\n").await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    const SIZE: usize = 50 * 1024 * 1024;
    let s = slot(&mut a, "big.bin", SIZE as u64, None).await;
    let addr = http_addr(&server);

    // Upload in 64 KiB pieces, hashing as we go: never the whole file in memory.
    let mut sock = TcpStream::connect(addr).await.unwrap();
    send_head(
        &mut sock,
        "PUT",
        &path_of(&s.put),
        &[("Content-Length", SIZE.to_string())],
    )
    .await;
    let mut sent = Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut piece = vec![0u8; 64 * 1024];
    for _ in 0..SIZE / piece.len() {
        for b in piece.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        sent.update(&piece);
        sock.write_all(&piece).await.unwrap();
    }
    let (status, _, _) = read_head(&mut sock).await;
    assert_eq!(status, 201);
    let sent = hex(&sent.finalize());

    // Download, hashing as it arrives.
    let mut sock = TcpStream::connect(addr).await.unwrap();
    send_head(&mut sock, "GET", &path_of(&s.get), &[]).await;
    let (status, headers, first) = read_head(&mut sock).await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("content-length") && v == &SIZE.to_string()));
    let mut got = Sha256::new();
    got.update(&first);
    let mut total = first.len();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), sock.read(&mut buf))
            .await
            .expect("download in time")
            .unwrap();
        if n == 0 {
            break;
        }
        total += n;
        got.update(&buf[..n]);
    }
    assert_eq!(total, SIZE);
    assert_eq!(hex(&got.finalize()), sent, "identical bytes");
    let rec = server.store.file(&id_of(&s.get)).await.unwrap().unwrap();
    assert_eq!(rec.sha256.as_deref(), Some(sent.as_str()));
}

#[tokio::test]
async fn bad_uploads_and_urls_are_refused() {
    let server =
        TestServer::with_config("[upload]\nsecret = \"a test secret that is long enough\"\n").await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    let addr = http_addr(&server);
    let data = content(1000, 3);
    let s = slot(&mut a, "photo.png", 1000, Some("image/png")).await;
    let put = path_of(&s.put);
    let png = || vec![("Content-Type", "image/png".to_string())];

    // Wrong size: declared, or sent without a length.
    let r = http(addr, "PUT", &put, &png(), &data[..999]).await;
    assert_eq!(r.status, 413, "short Content-Length");
    let mut longer = data.clone();
    longer.push(0);
    let r = http(addr, "PUT", &put, &png(), &longer).await;
    assert_eq!(r.status, 413, "long Content-Length");
    let mut h = png();
    h.push(("Transfer-Encoding", "chunked".into()));
    let r = http(addr, "PUT", &put, &h, &chunked(&longer)).await;
    assert_eq!(r.status, 413, "chunked, too long");
    let r = http(addr, "PUT", &put, &h, &chunked(&data[..10])).await;
    assert_eq!(r.status, 413, "chunked, too short");
    // Wrong content type.
    let r = http(
        addr,
        "PUT",
        &put,
        &[("Content-Type", "text/html".into())],
        &data,
    )
    .await;
    assert_eq!(r.status, 415);

    // Signatures: forged, for another method, for another slot, expired.
    let mut forged = put.clone();
    let i = forged.rfind('/').unwrap() - 3;
    let c = if &forged[i..i + 1] == "A" { "B" } else { "A" };
    forged.replace_range(i..i + 1, c);
    let r = http(addr, "PUT", &forged, &png(), &data).await;
    assert_eq!(r.status, 403, "forged signature");
    let r = http(addr, "PUT", &path_of(&s.get), &png(), &data).await;
    assert_eq!(r.status, 403, "a GET URL does not upload");
    let r = http(addr, "GET", &put, &[], b"").await;
    assert_eq!(r.status, 403, "a PUT URL does not download");
    let other = slot(&mut a, "photo.png", 1000, Some("image/png")).await;
    let spliced = put.replacen(&id_of(&s.put), &id_of(&other.put), 1);
    let r = http(addr, "PUT", &spliced, &png(), &data).await;
    assert_eq!(r.status, 403, "a signature is for one slot");

    let up = &server.running.as_ref().unwrap().server.upload;
    let id = id_of(&s.put);
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let expired = format!("/upload/{}/photo.png", up.token(UrlKind::Put, &id, past));
    let r = http(addr, "PUT", &expired, &png(), &data).await;
    assert_eq!(r.status, 403, "expired");
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));
    // Unknown ids and made-up paths.
    let ghost = format!(
        "/upload/{}/x.png",
        up.token(UrlKind::Get, "AAAAAAAAAAAAAAAAAAAAAA", 0)
    );
    assert_eq!(http(addr, "GET", &ghost, &[], b"").await.status, 404);
    for p in [
        "/upload/x/y",
        "/upload/../../etc/passwd/x",
        "/upload/a.b.c/x",
    ] {
        assert_eq!(http(addr, "GET", p, &[], b"").await.status, 404, "{p}");
    }
    let wrong_name = put.replace("photo.png", "other.png");
    assert_eq!(
        http(addr, "PUT", &wrong_name, &png(), &data).await.status,
        404
    );

    // None of that used up the slot or left a partial file.
    assert_eq!(tmp_files(&server), 0);
    let rec = server.store.file(&id).await.unwrap().unwrap();
    assert_eq!(rec.state, FileState::Requested);
    let r = http(
        addr,
        "PUT",
        &put,
        &[("Content-Type", "image/png; charset=binary".into())],
        &data,
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        http(addr, "GET", &path_of(&s.get), &[], b"").await.body,
        data
    );
}

#[tokio::test]
async fn slot_requests_are_checked() {
    let server = TestServer::with_config(
        "[upload]\nmax_file_size = 1000\nquota_daily_bytes = 2500\nquota_total_bytes = 0\n",
    )
    .await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "r").await;

    let r = request_slot(&mut a, "big.bin", 1001, None).await;
    assert_eq!(
        stanza_error(&r),
        Some(("modify".into(), "not-acceptable".into())),
        "{}",
        r.to_xml()
    );
    let max = r
        .child("error", ns::CLIENT)
        .and_then(|e| e.child("file-too-large", NS_UPLOAD))
        .and_then(|f| f.child("max-file-size", NS_UPLOAD))
        .map(|m| m.text());
    assert_eq!(max.as_deref(), Some("1000"), "{}", r.to_xml());
    assert!(error_text(&r).contains("1000"), "{}", r.to_xml());

    for (payload, what) in [
        (request_xml("a.bin", 0, None), "zero size"),
        (
            format!("<request xmlns='{NS_UPLOAD}' filename='a' size='ten'/>"),
            "size not a number",
        ),
        (
            format!("<request xmlns='{NS_UPLOAD}' filename='a' size='-5'/>"),
            "negative size",
        ),
        (
            format!("<request xmlns='{NS_UPLOAD}' size='5'/>"),
            "no filename",
        ),
        (
            format!("<request xmlns='{NS_UPLOAD}' filename='a'/>"),
            "no size",
        ),
        (request_xml("../etc/passwd", 5, None), "slash in name"),
        (request_xml("", 5, None), "empty name"),
        (request_xml("a.png", 5, Some("not a type")), "bad type"),
    ] {
        let r = a.iq("get", Some(UPLOAD), &payload).await;
        assert_eq!(
            stanza_error(&r).map(|e| e.1),
            Some("bad-request".into()),
            "{what}: {}",
            r.to_xml()
        );
    }
    let r = a
        .iq("set", Some(UPLOAD), &request_xml("a.bin", 5, None))
        .await;
    assert!(stanza_error(&r).is_some(), "requests are IQ get");

    // The daily quota: 1000 + 1000 fit, 1000 more does not; another user is unaffected.
    slot(&mut a, "1.bin", 1000, None).await;
    slot(&mut a, "2.bin", 1000, None).await;
    let r = request_slot(&mut a, "3.bin", 1000, None).await;
    assert_eq!(
        stanza_error(&r),
        Some(("wait".into(), "resource-constraint".into())),
        "{}",
        r.to_xml()
    );
    let text = error_text(&r);
    assert!(text.contains("2500") && text.contains("24 hours"), "{text}");
    slot(&mut a, "4.bin", 500, None).await;
    let mut b = server.login("bob", "r").await;
    slot(&mut b, "1.bin", 1000, None).await;

    // The total quota.
    let server = TestServer::with_config(
        "[upload]\nmax_file_size = 1000\nquota_daily_bytes = 0\nquota_total_bytes = 1500\n",
    )
    .await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    slot(&mut a, "1.bin", 1000, None).await;
    let r = request_slot(&mut a, "2.bin", 1000, None).await;
    assert_eq!(
        stanza_error(&r),
        Some(("wait".into(), "resource-constraint".into()))
    );
    assert!(error_text(&r).contains("1500"), "{}", error_text(&r));
}

#[tokio::test]
async fn range_and_conditional_gets() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    let addr = http_addr(&server);
    let data = content(1000, 11);
    let s = slot(&mut a, "report.pdf", 1000, Some("application/pdf")).await;
    let r = http(
        addr,
        "PUT",
        &path_of(&s.put),
        &[("Content-Type", "application/pdf".into())],
        &data,
    )
    .await;
    assert_eq!(r.status, 201);
    let get = path_of(&s.get);
    let range = |v: &str| vec![("Range", v.to_string())];

    let r = http(addr, "GET", &get, &range("bytes=100-199"), b"").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/1000"));
    assert_eq!(r.header("content-length"), Some("100"));
    assert_eq!(r.body, &data[100..200]);
    let r = http(addr, "GET", &get, &range("bytes=-10"), b"").await;
    assert_eq!((r.status, r.body.as_slice()), (206, &data[990..]));
    let r = http(addr, "GET", &get, &range("bytes=990-"), b"").await;
    assert_eq!(r.header("content-range"), Some("bytes 990-999/1000"));
    assert_eq!(r.body, &data[990..]);
    let r = http(addr, "GET", &get, &range("bytes=1000-"), b"").await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
    let r = http(addr, "GET", &get, &range("bytes=0-1,5-6"), b"").await;
    assert_eq!((r.status, r.body.len()), (200, 1000), "several ranges: all");
    let mut h = range("bytes=0-9");
    h.push(("If-Range", "\"stale\"".into()));
    let r = http(addr, "GET", &get, &h, b"").await;
    assert_eq!(
        (r.status, r.body.len()),
        (200, 1000),
        "If-Range mismatch: all"
    );

    let etag = r.header("etag").unwrap().to_string();
    let r = http(addr, "GET", &get, &[("If-None-Match", etag)], b"").await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    // Not an image: downloaded, not shown.
    let r = http(addr, "GET", &get, &[], b"").await;
    assert!(r
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment;")));
    let rec = server.store.file(&id_of(&s.get)).await.unwrap().unwrap();
    assert_eq!(rec.download_count, 6, "every GET with a body is recorded");
}

#[tokio::test]
async fn purged_and_expired_files_answer_404() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    let addr = http_addr(&server);
    let data = content(300, 5);
    let s = slot(&mut a, "x.bin", 300, None).await;
    assert_eq!(
        http(addr, "PUT", &path_of(&s.put), &[], &data).await.status,
        201
    );
    let id = id_of(&s.get);
    let on_disk = server
        .dir
        .path()
        .join("data/uploads")
        .join(&id[..2])
        .join(&id);
    assert!(on_disk.is_file());
    let srv = &server.running.as_ref().unwrap().server;
    let was = upload::purge(&*server.store, &*srv.upload.blobs, &id, "admin")
        .await
        .unwrap();
    assert_eq!(was, Some(FileState::Uploaded));
    assert!(!on_disk.exists(), "content deleted");
    assert_eq!(
        http(addr, "GET", &path_of(&s.get), &[], b"").await.status,
        404
    );
    let rec = server.store.file(&id).await.unwrap().unwrap();
    assert_eq!(rec.state, FileState::Purged);
    assert_eq!(rec.purge_reason.as_deref(), Some("admin"));

    // A file past its expiry is deleted by the expiry sweep.
    let id = "ExpiredFileId000000000";
    let now = herald_server::ext::now_micros();
    let slot_rec = NewFileSlot {
        id,
        uploader: "alice@example.test",
        file_name: "old.bin",
        size: 3,
        content_type: None,
        created_micros: now - 10_000_000,
        put_deadline_micros: now + 60_000_000,
        expires_micros: Some(now - 1),
    };
    let unlimited = FileQuota {
        daily_bytes: None,
        total_bytes: None,
        since_micros: 0,
        now_micros: now,
    };
    server
        .store
        .create_file_slot(&slot_rec, &unlimited)
        .await
        .unwrap();
    let mut w = srv.upload.blobs.create(id).await.unwrap();
    w.write(b"old").await.unwrap();
    w.commit().await.unwrap();
    assert!(server
        .store
        .complete_file_upload(id, &"0".repeat(64), now, "test")
        .await
        .unwrap());
    let get = format!("/upload/{}/old.bin", srv.upload.token(UrlKind::Get, id, 0));
    assert_eq!(http(addr, "GET", &get, &[], b"").await.status, 200);
    assert!(upload::expire_once(srv).await >= 1);
    assert_eq!(http(addr, "GET", &get, &[], b"").await.status, 404);
    assert_eq!(srv.upload.blobs.size(id).await.unwrap(), None);
    let rec = server.store.file(id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.purge_reason.as_deref()),
        (FileState::Purged, Some("expired"))
    );
}

#[tokio::test]
async fn links_sent_in_messages_record_recipients() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "r").await;
    let mut b = server.login("bob", "r").await;
    let s = slot(&mut a, "cat.jpg", 10, Some("image/jpeg")).await;
    let r = http(
        http_addr(&server),
        "PUT",
        &path_of(&s.put),
        &[("Content-Type", "image/jpeg".into())],
        &content(10, 1),
    )
    .await;
    assert_eq!(r.status, 201);
    let get = s.get.replace('&', "&amp;");
    a.send(&format!(
        "<message to='bob@example.test/r' type='chat' id='m1'><body>{get}</body>\
         <x xmlns='jabber:x:oob'><url>{get}</url></x></message>"
    ))
    .await;
    b.expect_match("the link", |e| e.name == "message").await;
    // A link with a broken signature is not a file of ours.
    a.send(&format!(
        "<message to='bob@example.test/r' type='chat' id='m2'><body>{}x</body></message>",
        get.replacen("/upload/", "/upload/A", 1)
    ))
    .await;
    b.expect_match("the second message", |e| e.attr("id") == Some("m2"))
        .await;
    let rec = server.store.file(&id_of(&s.get)).await.unwrap().unwrap();
    assert_eq!(rec.recipients.len(), 1, "{:?}", rec.recipients);
    assert_eq!(rec.recipients[0].jid, "bob@example.test");
    assert_eq!(rec.recipients[0].sender, "alice@example.test");
}

#[tokio::test]
async fn disabled_service_is_absent() {
    let server = TestServer::with_config("[upload]\nenabled = false\n").await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    let items = a
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<query xmlns='{}'/>", ns::DISCO_ITEMS),
        )
        .await;
    assert!(!items.to_xml().contains(UPLOAD), "{}", items.to_xml());
    let r = a.iq("get", Some(UPLOAD), &request_xml("a", 1, None)).await;
    assert!(stanza_error(&r).is_some());
    let r = http(http_addr(&server), "GET", "/upload/a.0.b/c", &[], b"").await;
    assert_eq!(r.status, 404);
}
