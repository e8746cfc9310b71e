//! Layer 5: `zajel://` sharing links and their QR codes.
//!
//! The links themselves ([`ShareLink`]: parse and format) live in
//! `zajel_discovery_core::share` and are re-exported here; this module renders
//! QR codes for the terminal (Unicode half blocks), as PNG and as SVG, and
//! reads them back from an image file.

use std::path::Path;

use qrcode::{Color, EcLevel, QrCode};
pub use zajel_discovery_core::share::*;

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
    use zajel_wire::pairing::PairingCode;

    #[test]
    fn qr_codes_round_trip_through_an_image_and_render_as_text_and_svg() {
        let uri = ShareLink::new(
            PairingCode::parse("ABC234").unwrap(),
            &["wss://relay.example:8443/ws".into()],
            None,
        )
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
