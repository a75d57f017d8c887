//! The HTTP side of the loop: a request head becomes a WebSocket upgrade on a known path, a
//! download of a stored file, or a plain response (the web client, `/healthz`, `/metrics`).

use std::path::PathBuf;

use log::debug;
use sha2::{Digest, Sha256};

use super::Server;
use crate::chat::{DownloadRefusal, Now};
use crate::conn::Route;
use crate::http::download::{credential, open_range, Credential};
use crate::http::{assets, handshake, Request, Response};
use crate::metrics::Gauges;
use crate::store::FileMeta;

impl Server {
    /// Answers a request head: an upgrade on a known WebSocket path, or a plain HTTP route.
    pub(super) fn route(&mut self, key: usize, req: Request, now: Now) {
        if !self.admit_request(key, &req, now) {
            return;
        }
        let head_only = req.method == "HEAD";
        let answer = if handshake::is_upgrade(&req) {
            match self.websocket_route(&req.path) {
                Some(route) => {
                    handshake::check(&req, &self.cfg.allowed_origins).map(|resp| (resp, route))
                }
                None => Err(Response::status(404)),
            }
            .inspect_err(|r| self.metrics.handshake_failed(r.status))
        } else if self.websocket_route(&req.path).is_some() && (req.method == "GET" || head_only) {
            // A browser pointed at the WebSocket address (HEAD gets the same head).
            self.metrics.handshake_failed(426);
            Err(handshake::upgrade_required())
        } else if let Some(file_id) = req.path.strip_prefix("/files/") {
            let file_id = file_id.to_string();
            return self.download(key, &req, &file_id, now);
        } else {
            Err(self.plain(&req))
        };
        let Some((conn, mut cx, ..)) = self.lend(key, now.mono) else {
            return;
        };
        let (bytes, route) = match answer {
            Ok(upgrade) => upgrade,
            Err(response) => {
                debug!(
                    "{}: {} {} -> {}",
                    conn.peer, req.method, req.path, response.status
                );
                conn.respond(&response, head_only, &mut cx);
                return;
            }
        };
        conn.upgrade(bytes, route, &mut cx);
        let ip = conn.peer.limit_key();
        if route == Route::Chat {
            conn.set_auth_deadline(Some(now.mono + cx.cfg.auth_timeout));
        }
        match route {
            Route::Chat => self.chat.open(key, ip, now),
            Route::Broadcast => self.broadcast_members.push(key),
            Route::Echo => {}
        }
    }

    /// The WebSocket route served at `path`, if any.
    fn websocket_route(&self, path: &str) -> Option<Route> {
        match path {
            "/ws" => Some(Route::Chat),
            "/echo" if self.cfg.echo => Some(Route::Echo),
            "/broadcast" if self.cfg.echo => Some(Route::Broadcast),
            _ => None,
        }
    }

    /// `GET /files/{id}`: authorized by a bearer token or a signed link (or, when allowed, a
    /// token in the query), streamed from disk with `Range` support.
    fn download(&mut self, key: usize, req: &Request, file_id: &str, now: Now) {
        let head_only = req.method == "HEAD";
        let outcome = if req.method != "GET" && !head_only {
            Err(Response::status(405).with_header("Allow", "GET, HEAD"))
        } else {
            self.authorize(credential(req), file_id, now)
                .map_err(refused)
                .and_then(|(meta, path)| open_range(&path, &meta, req.header("range")))
        };
        let Some((conn, mut cx, ..)) = self.lend(key, now.mono) else {
            return;
        };
        match outcome {
            Ok((head, file, len)) => conn.respond_file(head, file, len, head_only, &mut cx),
            Err(response) => {
                debug!(
                    "{}: {} {} -> {}",
                    conn.peer, req.method, req.path, response.status
                );
                conn.respond(&response, head_only, &mut cx);
            }
        }
    }

    /// Who may download: the holder of a valid token in the `Authorization` header, or of a
    /// signed link; a token in the query only when `--query-token-downloads` allows it.
    fn authorize(
        &mut self,
        credential: Credential,
        file_id: &str,
        now: Now,
    ) -> Result<(FileMeta, PathBuf), DownloadRefusal> {
        match credential {
            Credential::None => Err(DownloadRefusal::Unauthenticated),
            Credential::Bearer(token) => self.chat.authorize_download(Some(&token), file_id, now),
            Credential::Link { user, exp, sig } => {
                self.chat.authorize_link(file_id, (&user, &exp, &sig), now)
            }
            Credential::QueryToken(token) if self.cfg.query_token_downloads => {
                self.chat.authorize_download(Some(&token), file_id, now)
            }
            Credential::QueryToken(_) => {
                self.chat.file_metrics.download_refused("token_in_url");
                Err(DownloadRefusal::TokenInUrl)
            }
        }
    }

    /// The plain HTTP routes.
    fn plain(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return Response::status(405).with_header("Allow", "GET, HEAD");
        }
        if let Some(asset) = assets::asset(&req.path) {
            return asset;
        }
        match req.path.as_str() {
            "/healthz" if self.draining => Response::text(503, "shutting down"),
            "/healthz" => Response::text(200, "ok"),
            "/metrics" => match metrics_access(req, self.cfg.metrics_token.as_deref()) {
                Ok(()) => self.metrics_page(),
                Err(refusal) => refusal,
            },
            _ => Response::status(404),
        }
    }

    /// The `/metrics` text: the transport's counters, then the chat service's.
    fn metrics_page(&self) -> Response {
        Response {
            status: 200,
            headers: vec![("Cache-Control", "no-store".into())],
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: {
                let mut text = self.metrics.render(&self.gauges());
                self.chat.render_metrics(&mut text);
                self.chat.render_file_metrics(&mut text);
                text.into_bytes()
            },
        }
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            connections: self.conns.len(),
            websockets: self.conns.iter().filter(|(_, c)| c.is_open()).count(),
            queued_bytes: self.conns.iter().map(|(_, c)| c.queued()).sum(),
            max_connections: self.max_connections,
        }
    }
}

/// The answer to a refused download.
fn refused(refusal: DownloadRefusal) -> Response {
    let unauthorized =
        |why: &str| Response::text(401, why).with_header("WWW-Authenticate", "Bearer");
    match refusal {
        DownloadRefusal::Unauthenticated => {
            Response::status(401).with_header("WWW-Authenticate", "Bearer")
        }
        DownloadRefusal::BadLink => {
            unauthorized("this link is invalid or has expired; ask for a new one with file.link")
        }
        DownloadRefusal::TokenInUrl => unauthorized(
            "tokens in URLs are not accepted: send Authorization: Bearer, or use a link from file.link",
        ),
        DownloadRefusal::Forbidden => Response::status(403),
        DownloadRefusal::NotFound => Response::status(404),
        DownloadRefusal::Unavailable => Response::status(503),
    }
}

/// Who may read `/metrics`: only a request with `Authorization: Bearer` and the configured token
/// (`401` otherwise). Without a configured token nobody may, and the page does not exist
/// (`404`): users online and message counts are not for anonymous visitors, and a loopback
/// address proves nothing when a reverse proxy on the same host forwards the internet.
fn metrics_access(req: &Request, token: Option<&str>) -> Result<(), Response> {
    let Some(token) = token else {
        return Err(Response::status(404));
    };
    let given = req
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    // Compared as digests: the time taken says nothing about the token's bytes.
    let digest = |s: &str| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
    match given {
        Some(given) if digest(given) == digest(token) => Ok(()),
        _ => Err(Response::status(401).with_header("WWW-Authenticate", "Bearer")),
    }
}
