//! Layer 5: `zajel://` sharing links and their QR codes.
//!
//! The links themselves ([`ShareLink`]: parse and format) live in
//! `zajel_discovery_core::share` and are re-exported here; this module renders
//! QR codes for the terminal (Unicode half blocks), as PNG and as SVG, and
//! reads them back from an image file.

use std::path::{Path, PathBuf};

use qrcode::{Color, EcLevel, QrCode};
pub use zajel_discovery_core::share::*;

/// Why a QR code could not be made, written or read.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The text does not fit in a QR code.
    #[error("cannot make a QR code: {0}")]
    Encode(#[source] qrcode::types::QrError),
    /// The PNG file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    WriteImage {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The image file could not be opened or decoded.
    #[error("cannot read image {}: {source}", path.display())]
    ReadImage {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The image holds no QR code.
    #[error("no QR code found in the image")]
    NoCode,
    /// A QR code was found but could not be decoded.
    #[error("QR code found but unreadable: {0}")]
    Unreadable(#[source] rqrr::DeQRError),
}

impl QrError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Encode(_) => "qr_encode",
            Self::WriteImage { .. } => "qr_write_image",
            Self::ReadImage { .. } => "qr_read_image",
            Self::NoCode => "qr_not_found",
            Self::Unreadable(_) => "qr_unreadable",
        }
    }
}

fn qr(text: &str) -> Result<QrCode, QrError> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(QrError::Encode)
}

/// The QR code as Unicode half blocks for a terminal (dark on light).
pub fn render_terminal(text: &str) -> Result<String, QrError> {
    Ok(qr(text)?
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The QR code as an SVG document.
pub fn render_svg(text: &str) -> Result<String, QrError> {
    Ok(qr(text)?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build())
}

/// The QR code as a greyscale image (`scale` pixels per module, 4-module quiet zone).
pub fn render_image(text: &str, scale: u32) -> Result<image::GrayImage, QrError> {
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
pub fn write_png(text: &str, path: &Path) -> Result<(), QrError> {
    render_image(text, 8)?
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| QrError::WriteImage {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads the text of the first QR code found in an image.
pub fn decode_image(image: &image::GrayImage) -> Result<String, QrError> {
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(
        image.width() as usize,
        image.height() as usize,
        |x, y| image.get_pixel(x as u32, y as u32).0[0],
    );
    let grids = prepared.detect_grids();
    let grid = grids.first().ok_or(QrError::NoCode)?;
    let (_, text) = grid.decode().map_err(QrError::Unreadable)?;
    Ok(text)
}

/// Reads the text of the first QR code in an image file (PNG).
pub fn decode_image_file(path: &Path) -> Result<String, QrError> {
    let image = image::open(path)
        .map_err(|source| QrError::ReadImage {
            path: path.to_path_buf(),
            source,
        })?
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
        let none = decode_image(&blank).unwrap_err();
        assert_eq!(none.kind(), "qr_not_found");
        assert_eq!(none.to_string(), "no QR code found in the image");
    }

    #[test]
    fn each_qr_failure_names_its_kind_and_keeps_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let unread = decode_image_file(&missing).unwrap_err();
        assert_eq!(unread.kind(), "qr_read_image");
        assert!(
            unread
                .to_string()
                .starts_with(&format!("cannot read image {}: ", missing.display())),
            "{unread}"
        );

        let unwritable = dir.path().join("no-such-dir").join("code.png");
        let unwritten = write_png("zajel://ABC234", &unwritable).unwrap_err();
        assert_eq!(unwritten.kind(), "qr_write_image");
        assert!(
            unwritten
                .to_string()
                .starts_with(&format!("cannot write {}: ", unwritable.display())),
            "{unwritten}"
        );

        let too_long = "x".repeat(8000);
        let unmade = render_svg(&too_long).unwrap_err();
        assert_eq!(unmade.kind(), "qr_encode");
        assert!(
            unmade.to_string().starts_with("cannot make a QR code: "),
            "{unmade}"
        );
    }
}
