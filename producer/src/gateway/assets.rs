//! The dashboard's static files, compiled into the binary (no CDN, no build
//! step): the pages' scripts, the job page, and the vendored 3D viewer
//! (`assets/README.md` says where it comes from and under which licences).
//!
//! `/assets/{name}` answers without a token: the files are the same for
//! everyone and hold no data (browsers cannot send a bearer header for a
//! `<script src>`); the pages themselves (`/`, `/jobs/{id}`) and every API
//! call they make need one as before.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::ApiError;

/// One served file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The vendored viewer's file name carries its version, so it may be cached
/// for good; ours change with the gateway and are revalidated.
const VIEWER: &str = "model-viewer-4.4.0.min.js";

const ASSETS: &[Asset] = &[
    Asset {
        name: "common.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("assets/common.js"),
    },
    Asset {
        name: "charts.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("assets/charts.js"),
    },
    Asset {
        name: "dashboard.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("assets/dashboard.js"),
    },
    Asset {
        name: "job.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("assets/job.js"),
    },
    Asset {
        name: "outputs.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("assets/outputs.js"),
    },
    Asset {
        name: "mesh.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("assets/mesh.js"),
    },
    Asset {
        name: VIEWER,
        content_type: JAVASCRIPT,
        bytes: include_bytes!("assets/model-viewer-4.4.0.min.js"),
    },
    Asset {
        name: "model-viewer-LICENSES.txt",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("assets/model-viewer-LICENSES.txt"),
    },
];

/// `GET /assets/{name}`: one of [`ASSETS`], else 404 `asset_not_found`.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS.iter().find(|a| a.name == name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "asset_not_found",
            format!("no asset '{name}'"),
        )
    })?;
    let cache = if asset.name == VIEWER {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Ok((
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.bytes,
    )
        .into_response())
}

/// `GET /`: the dashboard.
pub async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// `GET /jobs/{id}`: the job page. The same page for every id: its script
/// reads the job (and finds out whether it exists) through the API.
pub async fn job_page(Path(_id): Path<String>) -> Html<&'static str> {
    Html(include_str!("assets/job.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_unique_name_and_the_pages_name_only_served_assets() {
        let mut names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        for page in [
            include_str!("dashboard.html"),
            include_str!("assets/job.html"),
        ] {
            for source in page.split("src=\"/assets/").skip(1) {
                let name = source.split('"').next().unwrap();
                assert!(names.contains(&name), "{name} is not served");
            }
        }
        let outputs = std::str::from_utf8(include_bytes!("assets/outputs.js")).unwrap();
        assert!(outputs.contains(&format!("\"/assets/{VIEWER}\"")));
    }
}
