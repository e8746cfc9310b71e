//! TURN framing over a byte stream (RFC 5766 §2.1, RFC 8656 §12.5): STUN
//! messages carry their own length; ChannelData messages are a 4-byte header
//! (channel number, data length) and, over TCP and TLS, are padded to a
//! multiple of 4 bytes. Shared by relay-lite's stream listeners and the
//! client-side [`crate::turn_bridge`], so both ends agree byte for byte.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frame either side accepts: a STUN header plus the largest
/// length its 16-bit field can carry, rounded to 4.
pub const MAX_FRAME: usize = 20 + 0xFFFF + 3;

/// What a frame starts with, from its first byte (RFC 7983 demultiplexing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stun,
    ChannelData,
}

fn kind(first: u8) -> Option<Kind> {
    match first >> 6 {
        0b00 => Some(Kind::Stun),
        0b01 => Some(Kind::ChannelData),
        _ => None,
    }
}

fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// Reads one frame and returns it without stream padding (the datagram a
/// UDP transport would have carried). `Ok(None)` at a clean end of stream;
/// an error for bytes that are neither STUN nor ChannelData (the stream has
/// lost its framing and must be closed).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    reader.read_exact(&mut header[1..]).await?;
    let length = u16::from_be_bytes([header[2], header[3]]) as usize;
    match kind(header[0]) {
        Some(Kind::Stun) => {
            if !length.is_multiple_of(4) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "STUN message length is not a multiple of 4",
                ));
            }
            let mut frame = vec![0u8; 20 + length];
            frame[..4].copy_from_slice(&header);
            reader.read_exact(&mut frame[4..]).await?;
            Ok(Some(frame))
        }
        Some(Kind::ChannelData) => {
            let mut frame = vec![0u8; 4 + padded(length)];
            frame[..4].copy_from_slice(&header);
            reader.read_exact(&mut frame[4..]).await?;
            frame.truncate(4 + length);
            Ok(Some(frame))
        }
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "stream carries neither STUN nor ChannelData",
        )),
    }
}

/// The bytes to write on a stream for one datagram: STUN messages as they
/// are, ChannelData padded to a multiple of 4. `None` for a datagram that is
/// neither, or whose length field disagrees with its size.
pub fn frame_for_stream(datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.len() < 4 {
        return None;
    }
    let length = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    match kind(datagram[0])? {
        Kind::Stun => (datagram.len() == 20 + length).then(|| datagram.to_vec()),
        Kind::ChannelData => {
            if datagram.len() < 4 + length {
                return None;
            }
            let mut frame = datagram[..4 + length].to_vec();
            frame.resize(4 + padded(length), 0);
            Some(frame)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channel_data_is_padded_on_the_stream_and_unpadded_off_it() {
        let datagram = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5];
        let frame = frame_for_stream(&datagram).unwrap();
        assert_eq!(frame, [0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]);
        let mut stream = [frame.clone(), frame].concat();
        stream.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
        stream.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        stream.extend_from_slice(&[7u8; 12]);
        let mut reader = &stream[..];
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), datagram);
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), datagram);
        let stun = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(stun.len(), 20);
        assert_eq!(read_frame(&mut reader).await.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        let mut reader = &[0xC0u8, 0, 0, 0][..];
        assert!(read_frame(&mut reader).await.is_err());
        let mut reader = &[0x40u8, 0, 0, 8, 1, 2][..];
        assert!(read_frame(&mut reader).await.is_err());
        let mut reader = &[0x00u8, 1, 0, 3][..];
        assert!(read_frame(&mut reader).await.is_err());
        assert_eq!(frame_for_stream(&[0x80, 0, 0, 0]), None);
        assert_eq!(frame_for_stream(&[0x00, 1, 0, 4]), None);
    }
}
