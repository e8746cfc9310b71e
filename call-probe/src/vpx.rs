//! VP8 encoding and decoding through libvpx (feature `video`; Debian's `libvpx-dev`, found with
//! pkg-config by `env-libvpx-sys`). This module is the only place with `unsafe` code in the
//! crate: every libvpx call is wrapped here, and what leaves it is safe (owned buffers, typed
//! errors). The encoder is set up for real-time calls: no look-ahead, constant bitrate,
//! error-resilient, one thread, keyframes only at the start and on request (PLI/FIR).
//!
//! Why libvpx and not a pure-Rust codec: the pure-Rust `vp8-encoder`/`vp8-decoder` crates are
//! not in the crate registry this project builds from, so video needs this system library
//! (audio does not: Opus is pure Rust).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_long, c_uint, c_ulong};
use std::ptr;

use vpx_sys as sys;

/// Errors from libvpx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VpxError {
    /// libvpx refused a call (`what`) with its own message.
    #[error("libvpx {what}: {message}")]
    Codec { what: &'static str, message: String },
    /// A picture of the wrong size was handed to the encoder.
    #[error("picture is {got} bytes, an I420 picture of {width}x{height} is {want}")]
    PictureSize {
        width: u32,
        height: u32,
        got: usize,
        want: usize,
    },
}

fn check(
    ctx: *mut sys::vpx_codec_ctx_t,
    result: sys::vpx_codec_err_t,
    what: &'static str,
) -> Result<(), VpxError> {
    if result == sys::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: libvpx returns static NUL-terminated strings (or NULL) for both calls; `ctx` is
    // a context this module initialised (or zeroed, in which case libvpx reads no detail).
    let message = unsafe {
        let text = sys::vpx_codec_err_to_string(result);
        let mut message = if text.is_null() {
            format!("error {}", result as u32)
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        };
        if !ctx.is_null() {
            let detail = sys::vpx_codec_error_detail(ctx);
            if !detail.is_null() {
                message.push_str(": ");
                message.push_str(&CStr::from_ptr(detail).to_string_lossy());
            }
        }
        message
    };
    Err(VpxError::Codec { what, message })
}

/// One encoded VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
}

/// A real-time VP8 encoder for I420 pictures of one size.
pub struct Vp8Encoder {
    ctx: Box<sys::vpx_codec_ctx_t>,
    width: u32,
    height: u32,
    pts: i64,
}

// SAFETY: the context is only used through `&mut self`; libvpx contexts may move between
// threads (they are not thread-affine), they must only not be used from two at once.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    /// An encoder for `width`×`height` at `fps` frames a second and `bitrate_kbps`.
    pub fn new(width: u32, height: u32, fps: u32, bitrate_kbps: u32) -> Result<Self, VpxError> {
        // SAFETY: plain FFI: the config is written by libvpx before it is read, the context
        // is boxed (libvpx keeps pointers into it) and initialised before any other use.
        unsafe {
            let iface = sys::vpx_codec_vp8_cx();
            let mut cfg = MaybeUninit::<sys::vpx_codec_enc_cfg_t>::zeroed().assume_init();
            check(
                ptr::null_mut(),
                sys::vpx_codec_enc_config_default(iface, &mut cfg, 0),
                "default encoder config",
            )?;
            cfg.g_w = width;
            cfg.g_h = height;
            cfg.g_timebase.num = 1;
            cfg.g_timebase.den = fps as c_int;
            cfg.g_threads = 1;
            cfg.g_lag_in_frames = 0;
            cfg.g_error_resilient = 1; // VPX_ERROR_RESILIENT_DEFAULT
            cfg.rc_end_usage = sys::vpx_rc_mode::VPX_CBR;
            cfg.rc_target_bitrate = bitrate_kbps;
            cfg.rc_min_quantizer = 4;
            cfg.rc_max_quantizer = 56;
            cfg.rc_dropframe_thresh = 0;
            // Keyframes at the start and on request only.
            cfg.kf_mode = sys::vpx_kf_mode::VPX_KF_DISABLED;
            let mut ctx = Box::new(MaybeUninit::<sys::vpx_codec_ctx_t>::zeroed().assume_init());
            check(
                ptr::null_mut(),
                sys::vpx_codec_enc_init_ver(
                    &mut *ctx,
                    iface,
                    &cfg,
                    0,
                    sys::VPX_ENCODER_ABI_VERSION as c_int,
                ),
                "encoder init",
            )?;
            let mut encoder = Self {
                ctx,
                width,
                height,
                pts: 0,
            };
            // Fastest real-time speed: test patterns need no quality search.
            check(
                &mut *encoder.ctx,
                sys::vpx_codec_control_(
                    &mut *encoder.ctx,
                    sys::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int,
                    -12 as c_int,
                ),
                "set speed",
            )?;
            Ok(encoder)
        }
    }

    /// Encodes one I420 picture (`width*height*3/2` bytes); a keyframe when `keyframe`.
    /// `None` when the encoder dropped the frame.
    pub fn encode(
        &mut self,
        i420: &[u8],
        keyframe: bool,
    ) -> Result<Option<EncodedFrame>, VpxError> {
        let want = i420_len(self.width, self.height);
        if i420.len() != want {
            return Err(VpxError::PictureSize {
                width: self.width,
                height: self.height,
                got: i420.len(),
                want,
            });
        }
        let flags: sys::vpx_enc_frame_flags_t = if keyframe {
            sys::VPX_EFLAG_FORCE_KF as sys::vpx_enc_frame_flags_t
        } else {
            0
        };
        // SAFETY: the image only borrows `i420`, whose size was checked above, for the
        // duration of `vpx_codec_encode` (libvpx copies what it keeps); packets are copied out
        // before the next libvpx call on this context.
        unsafe {
            let mut image = MaybeUninit::<sys::vpx_image_t>::zeroed().assume_init();
            let wrapped = sys::vpx_img_wrap(
                &mut image,
                sys::vpx_img_fmt::VPX_IMG_FMT_I420,
                self.width as c_uint,
                self.height as c_uint,
                1,
                i420.as_ptr() as *mut u8,
            );
            if wrapped.is_null() {
                return Err(VpxError::Codec {
                    what: "wrap picture",
                    message: "refused".into(),
                });
            }
            let ctx: *mut sys::vpx_codec_ctx_t = &mut *self.ctx;
            check(
                ctx,
                sys::vpx_codec_encode(
                    ctx,
                    &image,
                    self.pts,
                    1,
                    flags,
                    sys::VPX_DL_REALTIME as c_ulong,
                ),
                "encode",
            )?;
            self.pts += 1;
            let mut out: Option<EncodedFrame> = None;
            let mut iter: sys::vpx_codec_iter_t = ptr::null();
            loop {
                let packet = sys::vpx_codec_get_cx_data(ctx, &mut iter);
                if packet.is_null() {
                    break;
                }
                if (*packet).kind != sys::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let frame = (*packet).data.frame;
                let bytes = std::slice::from_raw_parts(frame.buf as *const u8, frame.sz as usize);
                let keyframe = frame.flags & sys::VPX_FRAME_IS_KEY != 0;
                match &mut out {
                    Some(existing) => {
                        existing.data.extend_from_slice(bytes);
                        existing.keyframe |= keyframe;
                    }
                    None => {
                        out = Some(EncodedFrame {
                            data: bytes.to_vec(),
                            keyframe,
                        })
                    }
                }
            }
            Ok(out)
        }
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new` and is destroyed once.
        unsafe {
            sys::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

/// Bytes of an I420 picture of `width`×`height`.
pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
}

/// A decoded picture: its size and its luma plane (tightly packed, `width` bytes a row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedPicture {
    pub width: u32,
    pub height: u32,
    pub luma: Vec<u8>,
}

/// A VP8 decoder.
pub struct Vp8Decoder {
    ctx: Box<sys::vpx_codec_ctx_t>,
}

// SAFETY: as for the encoder.
unsafe impl Send for Vp8Decoder {}

impl Vp8Decoder {
    pub fn new() -> Result<Self, VpxError> {
        // SAFETY: plain FFI on a boxed, zeroed context that libvpx initialises.
        unsafe {
            let mut ctx = Box::new(MaybeUninit::<sys::vpx_codec_ctx_t>::zeroed().assume_init());
            let cfg = sys::vpx_codec_dec_cfg_t {
                threads: 1,
                w: 0,
                h: 0,
            };
            check(
                ptr::null_mut(),
                sys::vpx_codec_dec_init_ver(
                    &mut *ctx,
                    sys::vpx_codec_vp8_dx(),
                    &cfg,
                    0,
                    sys::VPX_DECODER_ABI_VERSION as c_int,
                ),
                "decoder init",
            )?;
            Ok(Self { ctx })
        }
    }

    /// Decodes one whole VP8 frame (as the peer sent it: an error, never a crash, for junk).
    /// `None` when the frame gave no picture.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Option<DecodedPicture>, VpxError> {
        if frame.is_empty() {
            return Ok(None); // libvpx treats an empty buffer as "flush"
        }
        // SAFETY: libvpx reads `frame` only during the call; the picture it returns is owned
        // by the context and copied out (row by row, within its stride) before the next call.
        unsafe {
            let ctx: *mut sys::vpx_codec_ctx_t = &mut *self.ctx;
            check(
                ctx,
                sys::vpx_codec_decode(
                    ctx,
                    frame.as_ptr(),
                    frame.len() as c_uint,
                    ptr::null_mut(),
                    0 as c_long,
                ),
                "decode",
            )?;
            let mut iter: sys::vpx_codec_iter_t = ptr::null();
            let mut picture = None;
            loop {
                let image = sys::vpx_codec_get_frame(ctx, &mut iter);
                if image.is_null() {
                    break;
                }
                let image = &*image;
                let (width, height) = (image.d_w, image.d_h);
                let stride = image.stride[0] as usize;
                let plane = image.planes[0];
                if plane.is_null() || stride < width as usize {
                    continue;
                }
                let mut luma = Vec::with_capacity(width as usize * height as usize);
                for row in 0..height as usize {
                    let start = plane.add(row * stride);
                    luma.extend_from_slice(std::slice::from_raw_parts(start, width as usize));
                }
                picture = Some(DecodedPicture {
                    width,
                    height,
                    luma,
                });
            }
            Ok(picture)
        }
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            sys::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(width: u32, height: u32, luma: u8) -> Vec<u8> {
        let mut picture = vec![128u8; i420_len(width, height)];
        picture[..(width * height) as usize].fill(luma);
        picture
    }

    #[test]
    fn encodes_and_decodes_and_refuses_junk() {
        let mut encoder = Vp8Encoder::new(320, 240, 15, 300).unwrap();
        let mut decoder = Vp8Decoder::new().unwrap();
        let first = encoder
            .encode(&gray(320, 240, 200), false)
            .unwrap()
            .unwrap();
        assert!(first.keyframe, "the first frame is a keyframe");
        let second = encoder.encode(&gray(320, 240, 60), false).unwrap().unwrap();
        assert!(!second.keyframe);
        let forced = encoder.encode(&gray(320, 240, 60), true).unwrap().unwrap();
        assert!(forced.keyframe);
        let picture = decoder.decode(&first.data).unwrap().unwrap();
        assert_eq!((picture.width, picture.height), (320, 240));
        let mean = picture.luma.iter().map(|&v| u64::from(v)).sum::<u64>() / 76_800;
        assert!((mean as i64 - 200).abs() < 8, "{mean}");
        let picture = decoder.decode(&second.data).unwrap().unwrap();
        let mean = picture.luma.iter().map(|&v| u64::from(v)).sum::<u64>() / 76_800;
        assert!((mean as i64 - 60).abs() < 8, "{mean}");
        // Junk from the peer: an error, not a crash; the decoder still works afterwards.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut refused = 0;
        for round in 0..500usize {
            let junk: Vec<u8> = (0..(round % 300) + 1)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if decoder.decode(&junk).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        let mut decoder = Vp8Decoder::new().unwrap();
        assert!(decoder.decode(&forced.data).unwrap().is_some());
        assert!(encoder.encode(&[0u8; 10], false).is_err());
    }

    /// The test pattern's block code survives VP8 at the call's bitrate, frame after frame.
    #[test]
    fn pattern_counters_survive_vp8() {
        use crate::video::{
            read_picture, FrameContent, TestPattern, BITRATE_KBPS, FPS, HEIGHT, WIDTH,
        };
        let mut encoder = Vp8Encoder::new(WIDTH, HEIGHT, FPS, BITRATE_KBPS).unwrap();
        let mut decoder = Vp8Decoder::new().unwrap();
        for (counter, pattern_id) in (0..60u32).map(|c| (c, (c / 30) as u8)) {
            let frame = encoder
                .encode(&TestPattern::new(pattern_id).picture(counter), false)
                .unwrap()
                .expect("no frame dropped");
            let picture = decoder.decode(&frame.data).unwrap().unwrap();
            assert_eq!(
                read_picture(&picture.luma, picture.width, picture.height),
                FrameContent::Pattern {
                    pattern_id,
                    counter
                }
            );
        }
    }
}
