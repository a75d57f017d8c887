//! The built-in web client: static files compiled into the binary and served at `/`.
//!
//! Every response carries a Content-Security-Policy that allows only the server's own scripts,
//! styles, images and WebSocket, and no inline script, so text from other users can never run
//! as code even if the client made a mistake rendering it.

use super::response::Response;

/// The policy on every asset response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The files: request path, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "/connection.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/connection.js"),
    ),
    (
        "/model.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/model.js"),
    ),
    (
        "/links.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/links.js"),
    ),
    (
        "/upload.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/upload.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/style.css"),
    ),
];

/// The response for an asset path, if there is one.
pub fn asset(path: &str) -> Option<Response> {
    let (_, content_type, body) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    Some(Response {
        status: 200,
        headers: vec![
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY.into()),
            ("X-Content-Type-Options", "nosniff".into()),
            ("Referrer-Policy", "no-referrer".into()),
            ("Cache-Control", "no-cache".into()),
        ],
        content_type,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_served_with_a_strict_policy() {
        let r = asset("/").unwrap();
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/html"));
        let csp = &r
            .headers
            .iter()
            .find(|(n, _)| *n == "Content-Security-Policy")
            .unwrap()
            .1;
        assert!(csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe-inline"));
        assert!(asset("/nope").is_none());
        assert!(asset("/../Cargo.toml").is_none());
    }

    #[test]
    fn index_has_no_inline_script() {
        let html = String::from_utf8(asset("/").unwrap().body).unwrap();
        for tag in html.split("<script").skip(1) {
            let open = &tag[..tag.find('>').unwrap()];
            assert!(open.contains("src="), "inline script: <script{open}>");
        }
        // No inline event handler attributes (onclick=, onload=, ...) inside any tag.
        for tag in html.split('<').skip(1) {
            let inside = &tag[..tag.find('>').unwrap_or(tag.len())];
            let handler = inside.split_whitespace().any(|attr| {
                attr.starts_with("on")
                    && attr.contains('=')
                    && attr[2..]
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_lowercase())
            });
            assert!(!handler, "inline handler in <{inside}>");
        }
    }
}
