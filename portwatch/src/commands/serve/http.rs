//! The HTTP/1 server behind `portwatch serve`: `GET /metrics` and `GET /healthz`, on a
//! thread and runtime of its own, with every resource a client could hold bounded: the
//! request head's size (hyper answers 431 beyond it), the time to send it, the time a
//! connection may stay open, and how many connections are served at once (more are
//! closed on accept).
use std::{convert::Infallible, sync::Arc, thread, time::Duration};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{collector::Collector, registry::Registry};

use crate::output::metrics::Format;

/// What one client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub connections: usize,
    /// Bytes of request head (request line and headers) hyper buffers (its minimum is
    /// 8 KiB); beyond, 431.
    pub request_head_bytes: usize,
    /// Time to send a request head.
    pub header_timeout: Duration,
    /// Time a connection may stay open, keep-alive included.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 16,
            request_head_bytes: 8192,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(60),
        }
    }
}

/// The running server; [`Server::stop`] ends it.
pub struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Server {
    pub fn start(
        listener: std::net::TcpListener,
        collector: Box<dyn Collector>,
        limits: Limits,
    ) -> Result<Server> {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the HTTP server's runtime")?;
        let mut registry = Registry::default();
        registry.register_collector(collector);
        let registry = Arc::new(registry);
        let thread = thread::Builder::new()
            .name("portwatch-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(err) => {
                            eprintln!("portwatch: error: serving metrics: {err}");
                            return;
                        }
                    };
                    tokio::select! {
                        () = accept_loop(listener, registry, limits) => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("starting the HTTP server's thread")?;
        Ok(Server { stop, thread })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>, limits: Limits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, say: wait rather than spin.
                eprintln!("portwatch: warning: accepting a metrics connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&request, &registry)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.request_head_bytes)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_timeout, connection).await;
            drop(permit);
        });
    }
}

fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::from_accept(accept);
            let mut text = String::new();
            let encoded = match format {
                Format::Prometheus => {
                    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
                }
                Format::OpenMetrics => {
                    prometheus_client::encoding::text::encode(&mut text, registry)
                }
            };
            if encoded.is_err() {
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
            }
            let body = if head {
                Bytes::new()
            } else {
                Bytes::from(text)
            };
            Response::builder()
                .header(header::CONTENT_TYPE, format.content_type())
                .body(Full::new(body))
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""))
        }
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/" => plain(
            StatusCode::OK,
            "portwatch serve: metrics at /metrics, health at /healthz\n",
        ),
        _ => plain(StatusCode::NOT_FOUND, "not found: try /metrics\n"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
