//! XEP-0363 on the HTTP side: `PUT`, `GET`/`HEAD` and CORS preflight on
//! `/upload/<id>.<expiry>.<signature>/<file name>`.
//!
//! Bodies are streamed both ways (a request body goes chunk by chunk through SHA-256 into
//! the blob writer; a response reads the blob as the client takes it), so a file's size
//! does not decide the server's memory. Every completed upload and every GET is recorded
//! with the client's address (`ConnectInfo<SocketAddr>` put on requests by the HTTP
//! listener).
//!
//! Status codes: 201 on an upload, 200/206 on downloads (single byte ranges; several
//! ranges are answered with the whole file), 304 on a matching `If-None-Match`, 403 for
//! a bad or expired signature, 404 for an unknown or purged file, 409 for a second upload
//! to a slot, 413 when the body's size is not the slot's, 415 when its content type is not
//! the slot's, 416 for a range outside the file, 507 when the disk is full, 503 when the
//! audit log cannot be written (nothing is served or kept unrecorded).

use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald_storage::{FileDownload, FileRecord, FileState};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::blob::{BlobError, BlobWriter};
use super::{encode_segment, now_secs, TokenError, UrlKind};
use crate::ext::now_micros;
use crate::Server;

/// An upload that sends nothing for this long is abandoned.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from a blob per response chunk.
const READ_CHUNK: usize = 64 * 1024;

/// The upload routes, merged into the HTTP service's router.
pub fn routes() -> Router<Arc<Server>> {
    Router::new().route(
        "/upload/{token}/{name}",
        get(download).head(download).put(upload).options(preflight),
    )
}

/// Why a request failed; each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("not found")]
    NotFound,
    #[error("forbidden: {0}")]
    Forbidden(TokenError),
    #[error("the body must be exactly {expected} bytes")]
    SizeMismatch { expected: u64 },
    #[error("the content type must be {expected}")]
    ContentTypeMismatch { expected: String },
    #[error("this slot has been used already")]
    AlreadyUploaded,
    #[error("an upload to this slot is in progress")]
    InProgress,
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("the upload stalled")]
    Timeout,
    #[error("the upload broke off: {0}")]
    BrokenBody(String),
    #[error("insufficient storage")]
    Full,
    #[error("temporarily unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::SizeMismatch { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::ContentTypeMismatch { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::AlreadyUploaded | HttpError::InProgress => StatusCode::CONFLICT,
            HttpError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            HttpError::Timeout => StatusCode::REQUEST_TIMEOUT,
            HttpError::BrokenBody(_) => StatusCode::BAD_REQUEST,
            HttpError::Full => StatusCode::INSUFFICIENT_STORAGE,
            HttpError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<BlobError> for HttpError {
    fn from(e: BlobError) -> HttpError {
        match e {
            BlobError::Full => {
                tracing::error!("upload refused: no space left for uploads");
                HttpError::Full
            }
            BlobError::InvalidId => HttpError::NotFound,
            BlobError::Io(m) => {
                tracing::error!(error = %m, "upload storage failed");
                HttpError::Internal
            }
        }
    }
}

fn storage_failed(e: herald_storage::StorageError) -> HttpError {
    tracing::error!(error = %e, "upload audit log unavailable");
    HttpError::Unavailable
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), format!("{self}\n")).into_response();
        let h = r.headers_mut();
        cors(h);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let HttpError::RangeNotSatisfiable { size } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        r
    }
}

/// Browsers (web clients on other origins) may upload and download.
fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Content-Length, Content-Range, Accept-Ranges, Content-Disposition, ETag",
        ),
    );
}

async fn preflight(State(server): State<Arc<Server>>) -> Response {
    if !server.settings.raw.upload.enabled {
        return HttpError::NotFound.into_response();
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Content-Length, Range, If-Range, If-None-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

fn client_addr(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The record behind a signed URL, if it is for this file name.
async fn lookup(
    server: &Server,
    kind: UrlKind,
    token: &str,
    name: &str,
) -> Result<FileRecord, HttpError> {
    if !server.settings.raw.upload.enabled {
        return Err(HttpError::NotFound);
    }
    let id = match server.upload.verify(kind, token, now_secs()) {
        Ok(id) => id,
        Err(TokenError::Malformed) => return Err(HttpError::NotFound),
        Err(e) => return Err(HttpError::Forbidden(e)),
    };
    let rec = server
        .storage
        .file(id)
        .await
        .map_err(storage_failed)?
        .ok_or(HttpError::NotFound)?;
    if rec.file_name != name {
        return Err(HttpError::NotFound);
    }
    Ok(rec)
}

/// `type/subtype` of a MIME type, lowercased.
fn essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

async fn upload(
    State(server): State<Arc<Server>>,
    Path((token, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response, HttpError> {
    let addr = client_addr(&req);
    let rec = lookup(&server, UrlKind::Put, &token, &name).await?;
    match rec.state {
        FileState::Requested => {}
        FileState::Uploaded => return Err(HttpError::AlreadyUploaded),
        FileState::Purged => return Err(HttpError::NotFound),
    }
    let headers = req.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n != rec.size) {
        return Err(HttpError::SizeMismatch { expected: rec.size });
    }
    if let Some(want) = &rec.content_type {
        let got = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if essence(got) != essence(want) {
            return Err(HttpError::ContentTypeMismatch {
                expected: want.clone(),
            });
        }
    }
    let _claim = server.upload.claim(&rec.id).ok_or(HttpError::InProgress)?;
    // An upload that finished between the read above and the claim has released it.
    let state = server
        .storage
        .file(&rec.id)
        .await
        .map_err(storage_failed)?
        .map(|r| r.state);
    match state {
        Some(FileState::Requested) => {}
        Some(FileState::Uploaded) => return Err(HttpError::AlreadyUploaded),
        _ => return Err(HttpError::NotFound),
    }
    let writer = server.upload.blobs.create(&rec.id).await?;
    let hash = match receive(req.into_body(), writer, rec.size).await {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(id = %rec.id, client = %addr, error = %e, "upload refused");
            return Err(e);
        }
    };
    match server
        .storage
        .complete_file_upload(&rec.id, &hash, now_micros(), &addr)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            // Purged while it was being uploaded.
            let _ = server.upload.blobs.delete(&rec.id).await;
            return Err(HttpError::NotFound);
        }
        Err(e) => {
            let _ = server.upload.blobs.delete(&rec.id).await;
            return Err(storage_failed(e));
        }
    }
    tracing::info!(
        id = %rec.id,
        uploader = %rec.uploader,
        size = rec.size,
        client = %addr,
        "file uploaded"
    );
    let mut r = StatusCode::CREATED.into_response();
    cors(r.headers_mut());
    Ok(r)
}

/// Streams the body into `writer`, exactly `size` bytes; returns the SHA-256 (hex). On
/// any failure the writer is aborted, so nothing is left behind.
async fn receive(
    mut body: Body,
    mut writer: Box<dyn BlobWriter>,
    size: u64,
) -> Result<String, HttpError> {
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let outcome: Result<(), HttpError> = async {
        loop {
            let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
                Err(_) => return Err(HttpError::Timeout),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(HttpError::BrokenBody(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            received = received.saturating_add(data.len() as u64);
            if received > size {
                return Err(HttpError::SizeMismatch { expected: size });
            }
            hasher.update(&data);
            writer.write(&data).await?;
        }
        if received != size {
            return Err(HttpError::SizeMismatch { expected: size });
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            writer.commit().await?;
            Ok(hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect())
        }
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// What a `Range` header asks of a file of `size` bytes (RFC 9110 §14).
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: the whole file.
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

/// Parses a single `bytes=` range; anything else (other units, several ranges, bad
/// syntax) is ignored, as RFC 9110 allows.
pub fn parse_range(value: &str, size: u64) -> RangeAsk {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(size.saturating_sub(n)..size),
            None => RangeAsk::Whole,
        },
        // bytes=A-
        (false, true) => match num(a) {
            Some(s) if s >= size => RangeAsk::Unsatisfiable,
            Some(s) => RangeAsk::Part(s..size),
            None => RangeAsk::Whole,
        },
        // bytes=A-B
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= size {
                    RangeAsk::Unsatisfiable
                } else {
                    RangeAsk::Part(s..e.saturating_add(1).min(size))
                }
            }
            _ => RangeAsk::Whole,
        },
        (true, true) => RangeAsk::Whole,
    }
}

/// Types browsers may show in place; anything else downloads as an attachment.
fn is_inline(content_type: &str) -> bool {
    let e = essence(content_type);
    matches!(
        e.as_str(),
        "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "image/avif"
            | "image/bmp"
            | "image/heic"
            | "image/heif"
            | "text/plain"
    ) || e.starts_with("audio/")
        || e.starts_with("video/")
}

/// RFC 6266 `Content-Disposition` with an ASCII fallback and the UTF-8 name.
fn disposition(content_type: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let kind = if is_inline(content_type) {
        "inline"
    } else {
        "attachment"
    };
    format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        encode_segment(name)
    )
}

async fn download(
    State(server): State<Arc<Server>>,
    Path((token, name)): Path<(String, String)>,
    method: Method,
    req: Request,
) -> Result<Response, HttpError> {
    let addr = client_addr(&req);
    let rec = lookup(&server, UrlKind::Get, &token, &name).await?;
    if rec.state != FileState::Uploaded {
        return Err(HttpError::NotFound);
    }
    let headers = req.headers();
    let etag = rec.sha256.as_ref().map(|h| format!("\"{h}\""));
    let header_str = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let (Some(tag), Some(inm)) = (&etag, header_str(header::IF_NONE_MATCH)) {
        if inm.split(',').any(|t| t.trim() == tag || t.trim() == "*") {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            cors(r.headers_mut());
            if let Ok(v) = HeaderValue::from_str(tag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            return Ok(r);
        }
    }
    let range_applies = match header_str(header::IF_RANGE) {
        None => true,
        Some(v) => etag.as_deref() == Some(v.trim()),
    };
    let ask = match header_str(header::RANGE) {
        Some(v) if range_applies => parse_range(v, rec.size),
        _ => RangeAsk::Whole,
    };
    let range = match ask {
        RangeAsk::Whole => None,
        RangeAsk::Part(r) => Some(r),
        RangeAsk::Unsatisfiable => return Err(HttpError::RangeNotSatisfiable { size: rec.size }),
    };
    let Some(blob) = server.upload.blobs.open(&rec.id, range.clone()).await? else {
        tracing::warn!(id = %rec.id, "uploaded file has no content");
        return Err(HttpError::NotFound);
    };
    let head = method == Method::HEAD;
    if !head {
        let d = FileDownload {
            stamp_micros: now_micros(),
            client_addr: addr.clone(),
            downloader: None,
        };
        server
            .storage
            .record_file_download(&rec.id, &d)
            .await
            .map_err(storage_failed)?;
        tracing::info!(id = %rec.id, client = %addr, range = ?range, "file downloaded");
    }
    let content_type = rec
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let len = blob.len;
    let body = if head {
        Body::empty()
    } else {
        Body::new(BlobBody {
            reader: blob.reader,
            remaining: len,
            buf: vec![0; READ_CHUNK.min(len.max(1) as usize)].into_boxed_slice(),
        })
    };
    let mut r = Response::new(body);
    *r.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    cors(h);
    let mut set = |name: header::HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, content_type.to_string());
    set(header::CONTENT_LENGTH, len.to_string());
    set(header::ACCEPT_RANGES, "bytes".into());
    set(
        header::CONTENT_DISPOSITION,
        disposition(content_type, &rec.file_name),
    );
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; sandbox".into(),
    );
    set(header::CACHE_CONTROL, "private, max-age=86400".into());
    if let Some(tag) = etag {
        set(header::ETAG, tag);
    }
    if let Some(r) = &range {
        set(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", r.start, r.start + len - 1, blob.size),
        );
    }
    Ok(r)
}

/// A response body reading a blob as the client takes it.
struct BlobBody {
    reader: Pin<Box<dyn AsyncRead + Send + Sync>>,
    remaining: u64,
    buf: Box<[u8]>,
}

impl http_body::Body for BlobBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let max = this
            .buf
            .len()
            .min(this.remaining.min(usize::MAX as u64) as usize);
        let mut rb = ReadBuf::new(&mut this.buf[..max]);
        match this.reader.as_mut().poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shorter than recorded",
                    ))));
                }
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0..10));
        assert_eq!(parse_range("bytes=90-200", 100), Part(90..100));
        assert_eq!(parse_range("bytes=10-", 100), Part(10..100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90..100));
        assert_eq!(parse_range("bytes=-500", 100), Part(0..100));
        assert_eq!(parse_range("bytes=99-99", 100), Part(99..100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        for ignored in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
            "",
        ] {
            assert_eq!(parse_range(ignored, 100), Whole, "{ignored}");
        }
        assert_eq!(
            parse_range("bytes=0-18446744073709551615", 100),
            Part(0..100)
        );
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            disposition("image/png", "a b.png"),
            "inline; filename=\"a b.png\"; filename*=UTF-8''a%20b.png"
        );
        assert!(disposition("text/html", "x.html").starts_with("attachment;"));
        assert!(disposition("image/svg+xml", "x.svg").starts_with("attachment;"));
        assert!(disposition("video/mp4; codecs=x", "v.mp4").starts_with("inline;"));
        assert_eq!(
            disposition("application/pdf", "ré\"sumé.pdf"),
            "attachment; filename=\"r__sum_.pdf\"; filename*=UTF-8''r%C3%A9%22sum%C3%A9.pdf"
        );
    }

    #[test]
    fn error_statuses() {
        assert_eq!(HttpError::Full.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(
            HttpError::from(BlobError::Full).status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(
            HttpError::from(BlobError::Io("x".into())).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            HttpError::SizeMismatch { expected: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let r = HttpError::RangeNotSatisfiable { size: 7 }.into_response();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */7");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    /// A body that fails half-way (a full disk, a client that gives up) leaves nothing.
    #[tokio::test]
    async fn failed_receives_leave_no_file() {
        use super::super::blob::{BlobStore, FsBlobStore};
        struct FullDisk;
        #[async_trait::async_trait]
        impl BlobWriter for FullDisk {
            async fn write(&mut self, _: &[u8]) -> Result<(), BlobError> {
                Err(BlobError::Full)
            }
            async fn commit(self: Box<Self>) -> Result<(), BlobError> {
                panic!("commit after a failed write")
            }
            async fn abort(self: Box<Self>) {}
        }
        let e = receive(Body::from("hello"), Box::new(FullDisk), 5)
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::INSUFFICIENT_STORAGE);

        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().to_path_buf());
        store.init().await.unwrap();
        let id = "abcdefghijkl";
        for (body, size) in [("too long", 3), ("short", 10)] {
            let w = store.create(id).await.unwrap();
            let e = receive(Body::from(body), w, size).await.unwrap_err();
            assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert!(store.size(id).await.unwrap().is_none());
        }
        let w = store.create(id).await.unwrap();
        let hash = receive(Body::from("hello"), w, 5).await.unwrap();
        assert_eq!(
            hash,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(store.size(id).await.unwrap(), Some(5));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
