//! Layer 5: `zajel://` sharing links and their QR codes.
//!
//! A [`ShareLink`] extends Zajel's `zajel://<CODE>` additively:
//!
//! ```text
//! zajel://<CODE>?server=<url>&also=<url>&also=<url>&rk=<registry key>
//! ```
//!
//! `server` is the first server, exactly as `zajel_wire::pairing::SharingCode`
//! writes and reads it (so that parser still understands our links); `also`
//! carries more servers; `rk` is the registry's public key in unpadded
//! base64url (43 characters), which lets the receiver check it pins the same
//! registry. Every URL is percent-encoded like `encodeURIComponent`. Plain
//! `zajel://<CODE>` still parses (no servers).
//!
//! QR codes are rendered for the terminal (Unicode half blocks), as PNG and as
//! SVG, and read back from text or from an image file.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use qrcode::{Color, EcLevel, QrCode};
use serde::Serialize;
use zajel_wire::endpoint;
use zajel_wire::pairing::{percent_decode, percent_encode, PairingCode, SharingCode};

/// Query parameter carrying the second and further servers.
pub const ALSO_PARAM: &str = "also";
/// Query parameter carrying the registry key.
pub const REGISTRY_KEY_PARAM: &str = "rk";
/// Most servers one link carries.
pub const MAX_SERVERS: usize = 8;

/// A pairing code with the servers to meet on and the registry key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShareLink {
    pub code: PairingCode,
    /// Server URLs as given (each checked with `validate_endpoint`).
    pub servers: Vec<String>,
    /// The registry's public key, standard base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_key: Option<String>,
}

impl ShareLink {
    /// Builds a link, checking the URLs.
    pub fn new(
        code: PairingCode,
        servers: &[String],
        registry_key: Option<&VerifyingKey>,
    ) -> Result<Self, String> {
        if servers.len() > MAX_SERVERS {
            return Err(format!("at most {MAX_SERVERS} servers per link"));
        }
        for server in servers {
            endpoint::validate_endpoint(server).map_err(|e| format!("server {server}: {e}"))?;
        }
        Ok(Self {
            code,
            servers: servers.to_vec(),
            registry_key: registry_key.map(zajel_wire::keys::public_key_to_base64),
        })
    }

    /// The URI (plain `zajel://CODE` when there is nothing to add).
    pub fn to_uri(&self) -> String {
        let first = self.servers.first().map(|server| SharingCode {
            code: self.code,
            server: Some(server.clone()),
        });
        let mut uri = first.unwrap_or(SharingCode::plain(self.code)).to_uri();
        let mut extra = Vec::new();
        for server in self.servers.iter().skip(1) {
            extra.push(format!("{ALSO_PARAM}={}", percent_encode(server)));
        }
        if let Some(key) = self
            .registry_key
            .as_deref()
            .and_then(|k| zajel_wire::keys::public_key_from_base64(k).ok())
        {
            extra.push(format!(
                "{REGISTRY_KEY_PARAM}={}",
                URL_SAFE_NO_PAD.encode(key.as_bytes())
            ));
        }
        if !extra.is_empty() {
            uri.push(if self.servers.is_empty() { '?' } else { '&' });
            uri.push_str(&extra.join("&"));
        }
        uri
    }

    /// Parses a link (or a bare pairing code typed by a person).
    pub fn parse(text: &str) -> Result<Self, String> {
        let base = SharingCode::from_user_input(text).map_err(|e| e.to_string())?;
        let mut servers: Vec<String> = base.server.into_iter().collect();
        let mut registry_key = None;
        let text = text.trim();
        let query = text
            .split_once('#')
            .map_or(text, |(before, _)| before)
            .split_once('?')
            .map(|(_, q)| q);
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                ALSO_PARAM => {
                    let url = percent_decode(value)
                        .ok_or_else(|| "also: bad percent-encoding".to_string())?;
                    endpoint::validate_endpoint(&url).map_err(|e| format!("also {url}: {e}"))?;
                    servers.push(url);
                }
                REGISTRY_KEY_PARAM => {
                    if registry_key.is_some() {
                        return Err("more than one rk".into());
                    }
                    let bytes = URL_SAFE_NO_PAD
                        .decode(value)
                        .map_err(|_| "rk: not unpadded base64url".to_string())?;
                    let array: [u8; 32] = bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| "rk: not 32 bytes".to_string())?;
                    let key = VerifyingKey::from_bytes(&array)
                        .map_err(|_| "rk: not an Ed25519 key".to_string())?;
                    registry_key = Some(zajel_wire::keys::public_key_to_base64(&key));
                }
                _ => {}
            }
        }
        if servers.len() > MAX_SERVERS {
            return Err(format!("more than {MAX_SERVERS} servers"));
        }
        Ok(Self {
            code: base.code,
            servers,
            registry_key,
        })
    }
}

fn qr(text: &str) -> Result<QrCode, String> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| format!("cannot make a QR code: {e}"))
}

/// The QR code as Unicode half blocks for a terminal (dark on light).
pub fn render_terminal(text: &str) -> Result<String, String> {
    Ok(qr(text)?
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The QR code as an SVG document.
pub fn render_svg(text: &str) -> Result<String, String> {
    Ok(qr(text)?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build())
}

/// The QR code as a greyscale image (`scale` pixels per module, 4-module quiet zone).
pub fn render_image(text: &str, scale: u32) -> Result<image::GrayImage, String> {
    let code = qr(text)?;
    let width = code.width() as u32;
    let colors = code.to_colors();
    let quiet = 4;
    let size = (width + 2 * quiet) * scale;
    Ok(image::GrayImage::from_fn(size, size, |x, y| {
        let (mx, my) = (x / scale, y / scale);
        let dark = mx >= quiet
            && my >= quiet
            && mx < quiet + width
            && my < quiet + width
            && colors[((my - quiet) * width + (mx - quiet)) as usize] == Color::Dark;
        image::Luma([if dark { 0 } else { 255 }])
    }))
}

/// Writes the QR code as a PNG file.
pub fn write_png(text: &str, path: &Path) -> Result<(), String> {
    render_image(text, 8)?
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads the text of the first QR code found in an image.
pub fn decode_image(image: &image::GrayImage) -> Result<String, String> {
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(
        image.width() as usize,
        image.height() as usize,
        |x, y| image.get_pixel(x as u32, y as u32).0[0],
    );
    let grids = prepared.detect_grids();
    let grid = grids.first().ok_or("no QR code found in the image")?;
    let (_, text) = grid
        .decode()
        .map_err(|e| format!("QR code found but unreadable: {e}"))?;
    Ok(text)
}

/// Reads the text of the first QR code in an image file (PNG).
pub fn decode_image_file(path: &Path) -> Result<String, String> {
    let image = image::open(path)
        .map_err(|e| format!("cannot read image {}: {e}", path.display()))?
        .to_luma8();
    decode_image(&image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> PairingCode {
        PairingCode::parse("ABC234").unwrap()
    }

    #[test]
    fn links_round_trip_and_stay_readable_by_the_wire_parser() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]).verifying_key();
        let link = ShareLink::new(
            code(),
            &[
                "wss://a.example/ws".to_string(),
                "https://b.example:8443".to_string(),
            ],
            Some(&key),
        )
        .unwrap();
        let uri = link.to_uri();
        assert!(uri.starts_with("zajel://ABC234?server=wss%3A%2F%2Fa.example%2Fws&also="));
        assert_eq!(ShareLink::parse(&uri).unwrap(), link);
        // Zajel's wire parser still reads the code and first server.
        let wire = SharingCode::parse(&uri).unwrap();
        assert_eq!(wire.server.as_deref(), Some("wss://a.example/ws"));
        // Plain codes and bare typed codes still work.
        let plain = ShareLink::parse("zajel://ABC234").unwrap();
        assert!(plain.servers.is_empty());
        assert_eq!(plain.to_uri(), "zajel://ABC234");
        assert_eq!(ShareLink::parse(" ABC234 ").unwrap(), plain);
        let key_only = ShareLink::new(code(), &[], Some(&key)).unwrap();
        assert_eq!(ShareLink::parse(&key_only.to_uri()).unwrap(), key_only);
    }

    #[test]
    fn bad_links_are_refused() {
        assert!(ShareLink::parse("zajel://abc234").is_err());
        assert!(ShareLink::parse("zajel://ABC234?also=ftp%3A%2F%2Fx").is_err());
        assert!(ShareLink::parse("zajel://ABC234?rk=AAAA").is_err());
        assert!(ShareLink::parse("https://ABC234").is_err());
        let many = vec!["wss://a.example".to_string(); MAX_SERVERS + 1];
        assert!(ShareLink::new(code(), &many, None).is_err());
    }

    #[test]
    fn qr_codes_round_trip_through_an_image_and_render_as_text_and_svg() {
        let uri = ShareLink::new(code(), &["wss://relay.example:8443/ws".into()], None)
            .unwrap()
            .to_uri();
        let image = render_image(&uri, 4).unwrap();
        assert_eq!(decode_image(&image).unwrap(), uri);
        assert!(render_svg(&uri).unwrap().starts_with("<?xml"));
        assert!(render_terminal(&uri).unwrap().contains('█'));
        let blank = image::GrayImage::from_pixel(100, 100, image::Luma([255]));
        assert!(decode_image(&blank).unwrap_err().contains("no QR code"));
    }
}
