//! Where a decoder can start (`ts::pes`): the PES header and the picture
//! scan over arbitrary bytes. The first byte picks the codec and where the
//! data is cut between calls; the scan must give the same answer whatever
//! the cuts, and one in a single packet's payload must agree with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ts::packet::{ContinuityCheck, Packet};
use ts::pes::{first_picture, header_len, PictureScan, VideoCodec};
use ts::PACKET_LEN;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let codec = match ctl % 3 {
        0 => VideoCodec::H264,
        1 => VideoCodec::Hevc,
        _ => VideoCodec::Mpeg2,
    };
    if let Ok(n) = header_len(rest) {
        assert!((6..=rest.len()).contains(&n));
    }
    let whole = PictureScan::new(codec).push(rest);
    let mut cut = PictureScan::new(codec);
    let mut got = None;
    for piece in rest.chunks(usize::from(ctl / 3) + 1) {
        got = cut.push(piece);
    }
    if rest.is_empty() {
        got = cut.found();
    }
    assert_eq!(whole, got);
    if let (Ok(n), Ok(first)) = (header_len(rest), first_picture(codec, rest)) {
        assert_eq!(first, PictureScan::new(codec).push(&rest[n..]));
    }
    let mut cc = ContinuityCheck::new();
    for chunk in rest.chunks(PACKET_LEN) {
        if let Ok(p) = Packet::new(chunk) {
            let _ = cc.check(&p);
        }
    }
});
