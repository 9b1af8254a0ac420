//! The web page, embedded in the binary (rust-embed): nothing to build or
//! install to run it. Files live in `web/` at the repository root.

use actix_web::http::header;
use actix_web::{web, HttpResponse, ResponseError};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Assets;

/// Scripts and connections only from this host (`'self'` covers its own
/// `ws:`/`wss:` too): message text that slips past the page's text-only
/// rendering still cannot run, nor send anything elsewhere.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; frame-ancestors 'none'";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(|| serve("index.html")))
        .route("/static/{file:.*}", web::get().to(asset));
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    serve(&file).await
}

async fn serve(path: &str) -> HttpResponse {
    match Assets::get(path) {
        Some(file) => HttpResponse::Ok()
            .content_type(content_type(path))
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(file.data.into_owned()),
        None => super::error::ApiError::not_found("that file").error_response(),
    }
}

/// The page ships a handful of file kinds; anything else is bytes.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html",
        Some("js" | "mjs") => "text/javascript",
        Some("css") => "text/css",
        Some("txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_has_a_known_type() {
        for file in Assets::iter() {
            assert_ne!(
                content_type(&file),
                "application/octet-stream",
                "{file} would be served as bytes"
            );
        }
        assert_eq!(content_type("a/b.tar.gz"), "application/octet-stream");
    }
}
