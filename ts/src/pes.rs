//! Where a decoder can start: the PES packet header and the first
//! picture of an access unit, for a receiver that joins a stream (at the
//! start, or after a gap) and must not hand a player the middle of a
//! group of pictures.
//!
//! A random access point is signalled in the adaptation field
//! ([`crate::packet::AdaptationField::random_access`], set by most
//! encoders on the first packet of a key frame). When the encoder does
//! not set it, [`PictureScan`] reads the start of the PES packet's
//! elementary stream data for the first picture: an IDR slice in H.264
//! (NAL unit type 5), an IRAP picture in H.265 (types 16 to 21), a
//! sequence header in MPEG-1/2 video. The scan keeps its state between
//! calls, so a start code or a NAL header split across two TS packets is
//! still found.
//!
//! What it must never do: panic or read past a slice on any input (it
//! parses untrusted bytes), allocate, or decide what a PID is for.

/// A video coding the scan knows, by PMT stream_type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// MPEG-1 or MPEG-2 video (stream_type 0x01, 0x02).
    Mpeg2,
    /// H.264 / AVC (0x1B).
    H264,
    /// H.265 / HEVC (0x24).
    Hevc,
}

impl VideoCodec {
    /// The codec of a PMT stream_type, if the scan knows it.
    pub fn of_stream_type(stream_type: u8) -> Option<VideoCodec> {
        match stream_type {
            0x01 | 0x02 => Some(VideoCodec::Mpeg2),
            0x1B => Some(VideoCodec::H264),
            0x24 => Some(VideoCodec::Hevc),
            _ => None,
        }
    }
}

/// Whether a PMT stream_type is video (of any coding, known to the scan
/// or not): MPEG-1/2, MPEG-4 part 2, H.264 (and its SVC and MVC
/// extensions), H.265, VC-1 and AVS.
pub fn is_video(stream_type: u8) -> bool {
    matches!(
        stream_type,
        0x01 | 0x02 | 0x10 | 0x1B | 0x1F | 0x20 | 0x24 | 0x42 | 0xD1 | 0xEA
    )
}

/// Why a payload does not start a PES packet this module can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PesError {
    #[error("no PES start code (00 00 01) at the start of the payload")]
    NoStartCode,
    #[error("the PES header does not fit in the packet's payload")]
    Truncated,
    #[error("the PES header's marker bits are not '10'")]
    BadMarker,
}

/// The length of the PES header at the start of `payload` (the payload of
/// a packet with payload_unit_start_indicator set): where the elementary
/// stream data starts in it. Streams without the optional header
/// (padding, private_stream_2, the program stream map and directory,
/// ECM/EMM, DSM-CC, H.222.1 type E) have a 6-byte header.
pub fn header_len(payload: &[u8]) -> Result<usize, PesError> {
    let (Some(prefix), Some(&stream_id)) = (payload.get(..3), payload.get(3)) else {
        return Err(if payload.starts_with(&[0, 0, 1][..payload.len().min(3)]) {
            PesError::Truncated
        } else {
            PesError::NoStartCode
        });
    };
    if prefix != [0, 0, 1] {
        return Err(PesError::NoStartCode);
    }
    if matches!(
        stream_id,
        0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
    ) {
        return if payload.len() >= 6 {
            Ok(6)
        } else {
            Err(PesError::Truncated)
        };
    }
    let (Some(&flags), Some(&data_len)) = (payload.get(6), payload.get(8)) else {
        return Err(PesError::Truncated);
    };
    if flags & 0xC0 != 0x80 {
        return Err(PesError::BadMarker);
    }
    let len = 9 + usize::from(data_len);
    if len > payload.len() {
        return Err(PesError::Truncated);
    }
    Ok(len)
}

/// What the first picture of an access unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picture {
    /// A random access point: a decoder can start here.
    RandomAccess,
    /// A picture that needs earlier ones.
    Dependent,
}

/// Scans elementary stream data, from the start of a PES packet's, for
/// its first picture (see the module docs), across as many calls as the
/// data takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureScan {
    codec: VideoCodec,
    /// Zero bytes in a row just before the current byte (at most 2 kept).
    zeros: u8,
    /// The byte after a start code is due.
    after_start_code: bool,
    found: Option<Picture>,
}

impl PictureScan {
    pub fn new(codec: VideoCodec) -> Self {
        PictureScan {
            codec,
            zeros: 0,
            after_start_code: false,
            found: None,
        }
    }

    /// What was found so far.
    pub fn found(&self) -> Option<Picture> {
        self.found
    }

    /// Scans the next bytes of elementary stream data; the first picture
    /// once it has been seen (then the same answer for ever).
    pub fn push(&mut self, data: &[u8]) -> Option<Picture> {
        if self.found.is_some() {
            return self.found;
        }
        for &b in data {
            if self.after_start_code {
                self.after_start_code = false;
                if let Some(p) = self.unit(b) {
                    self.found = Some(p);
                    return self.found;
                }
                self.zeros = u8::from(b == 0);
                continue;
            }
            match b {
                0 => self.zeros = self.zeros.saturating_add(1).min(2),
                1 if self.zeros >= 2 => {
                    self.after_start_code = true;
                    self.zeros = 0;
                }
                _ => self.zeros = 0,
            }
        }
        None
    }

    /// The unit whose header (or start code value) is `b`: a picture, or
    /// `None` for anything else (parameter sets, SEI, delimiters...).
    fn unit(&self, b: u8) -> Option<Picture> {
        match self.codec {
            VideoCodec::H264 => {
                if b & 0x80 != 0 {
                    return None; // forbidden_zero_bit: not a NAL header
                }
                match b & 0x1F {
                    5 => Some(Picture::RandomAccess),
                    1..=4 => Some(Picture::Dependent),
                    _ => None,
                }
            }
            VideoCodec::Hevc => {
                if b & 0x80 != 0 {
                    return None;
                }
                match (b >> 1) & 0x3F {
                    16..=21 => Some(Picture::RandomAccess),
                    0..=9 => Some(Picture::Dependent),
                    _ => None,
                }
            }
            VideoCodec::Mpeg2 => match b {
                0xB3 => Some(Picture::RandomAccess), // sequence_header
                0x00 => Some(Picture::Dependent),    // a picture without one
                _ => None,
            },
        }
    }
}

/// The first picture of the PES packet that `payload` (a packet's payload,
/// with payload_unit_start_indicator set) starts, if it is in this
/// payload: a one-packet [`PictureScan`].
pub fn first_picture(codec: VideoCodec, payload: &[u8]) -> Result<Option<Picture>, PesError> {
    let at = header_len(payload)?;
    Ok(PictureScan::new(codec).push(payload.get(at..).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PES header (video stream 0xE0) with a PTS, then `es`.
    fn pes(es: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
        v.extend_from_slice(es);
        v
    }

    #[test]
    fn header_len_reads_the_optional_header_and_refuses_what_is_not_pes() {
        assert_eq!(header_len(&pes(&[])), Ok(14));
        // Padding: no optional header.
        assert_eq!(header_len(&[0, 0, 1, 0xBE, 0, 10]), Ok(6));
        assert_eq!(header_len(&[0, 0, 1, 0xBE, 0]), Err(PesError::Truncated));
        assert_eq!(header_len(&[0, 0, 2, 0xE0]), Err(PesError::NoStartCode));
        assert_eq!(header_len(&[0xFF]), Err(PesError::NoStartCode));
        assert_eq!(header_len(&[0, 0]), Err(PesError::Truncated));
        assert_eq!(header_len(&[]), Err(PesError::Truncated));
        assert_eq!(
            header_len(&[0, 0, 1, 0xE0, 0, 0, 0x40, 0x80, 0]),
            Err(PesError::BadMarker)
        );
        // The header data length points past the payload.
        assert_eq!(
            header_len(&[0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 200, 0]),
            Err(PesError::Truncated)
        );
    }

    #[test]
    fn h264_idr_after_parameter_sets_is_random_access_a_p_slice_is_not() {
        // AUD, SPS, PPS, SEI, then the IDR slice: as x264 writes a key frame.
        let key = [
            0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xCE, 0, 0, 1, 0x06, 5,
            0, 0, 1, 0x65, 0x88,
        ];
        assert_eq!(
            first_picture(VideoCodec::H264, &pes(&key)),
            Ok(Some(Picture::RandomAccess))
        );
        let p = [0, 0, 0, 1, 0x09, 0x30, 0, 0, 1, 0x41, 0x9A];
        assert_eq!(
            first_picture(VideoCodec::H264, &pes(&p)),
            Ok(Some(Picture::Dependent))
        );
        // Parameter sets alone: not decided yet.
        assert_eq!(first_picture(VideoCodec::H264, &pes(&key[..20])), Ok(None));
    }

    #[test]
    fn a_start_code_split_across_calls_is_found() {
        let es = [0x11, 0, 0, 1, 0x06, 0xAA, 0, 0, 0, 1, 0x65, 0x88];
        for cut in 0..=es.len() {
            let mut s = PictureScan::new(VideoCodec::H264);
            let first = s.push(&es[..cut]);
            let second = s.push(&es[cut..]);
            assert_eq!(second, Some(Picture::RandomAccess), "cut at {cut}");
            assert!(first.is_none() || cut >= 11, "cut at {cut}");
            // Decided: it stays so.
            assert_eq!(s.push(&[0, 0, 1, 0x41]), Some(Picture::RandomAccess));
            assert_eq!(s.found(), Some(Picture::RandomAccess));
        }
    }

    #[test]
    fn hevc_irap_and_mpeg2_sequence_headers() {
        // VPS (32), SPS (33), PPS (34), then an IDR_W_RADL slice (19).
        let key = [
            0, 0, 1, 0x40, 1, 0, 0, 1, 0x42, 1, 0, 0, 1, 0x44, 1, 0, 0, 1, 0x26, 1,
        ];
        assert_eq!(
            first_picture(VideoCodec::Hevc, &pes(&key)),
            Ok(Some(Picture::RandomAccess))
        );
        // A TRAIL_R slice (1).
        assert_eq!(
            first_picture(VideoCodec::Hevc, &pes(&[0, 0, 1, 0x02, 1])),
            Ok(Some(Picture::Dependent))
        );
        assert_eq!(
            first_picture(VideoCodec::Mpeg2, &pes(&[0, 0, 1, 0xB3, 0x14])),
            Ok(Some(Picture::RandomAccess))
        );
        assert_eq!(
            first_picture(VideoCodec::Mpeg2, &pes(&[0, 0, 1, 0x00, 0x14])),
            Ok(Some(Picture::Dependent))
        );
    }

    #[test]
    fn stream_types() {
        assert_eq!(VideoCodec::of_stream_type(0x1B), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::of_stream_type(0x24), Some(VideoCodec::Hevc));
        assert_eq!(VideoCodec::of_stream_type(0x02), Some(VideoCodec::Mpeg2));
        assert_eq!(VideoCodec::of_stream_type(0x0F), None);
        assert!(is_video(0x1B) && is_video(0xEA) && !is_video(0x0F) && !is_video(0x06));
    }
}
