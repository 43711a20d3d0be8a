//! PSI and CA sections of `ts`: the input is parsed as one section by every
//! table parser, and also cut into TS packets on a few PIDs and run through
//! the section assembler, whose output is parsed in turn.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ts::packet::{Packet, SYNC_BYTE};
use ts::psi::{
    crc32_mpeg2, emm_section_address, packetize, Cat, Pat, Pmt, PrivateSection, Sdt,
    SectionAssembler, SectionHeader, TableSections, MAX_SECTION_LEN,
};
use ts::PACKET_LEN;

/// Every parser on one section; whatever parses re-encodes and parses back
/// to the same value.
fn parse(section: &[u8]) {
    let _ = SectionHeader::parse(section);
    if let Ok(t) = Pat::from_section(section) {
        assert_eq!(Pat::from_section(&t.to_section().unwrap()).unwrap(), t);
    }
    if let Ok(t) = Pmt::from_section(section) {
        assert_eq!(Pmt::from_section(&t.to_section().unwrap()).unwrap(), t);
    }
    if let Ok(t) = Cat::from_section(section) {
        assert_eq!(Cat::from_section(&t.to_section().unwrap()).unwrap(), t);
    }
    if let Ok(t) = Sdt::from_section(section) {
        assert_eq!(Sdt::from_section(&t.to_section().unwrap()).unwrap(), t);
    }
    if let Ok(p) = PrivateSection::parse(section) {
        if let Ok(again) = PrivateSection::build(p.table_id, p.payload) {
            assert_eq!(PrivateSection::parse(&again).unwrap(), p);
            assert_eq!(emm_section_address(&again), emm_section_address(section));
        }
    }
    let _ = emm_section_address(section);
    let _ = Pat::from_sections(&[section]);
    let _ = Cat::from_sections(&[section]);
}

fuzz_target!(|data: &[u8]| {
    parse(data);
    // The same bytes with a correct CRC32 in their last four, so that the
    // table parsers get past the CRC check.
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let end = fixed.len() - 4;
        let crc = crc32_mpeg2(&fixed[..end]);
        fixed[end..].copy_from_slice(&crc.to_be_bytes());
        parse(&fixed);
    }

    // The input as packets: sync byte forced, PIDs folded onto a few
    // assemblers so that sections build up across packets.
    let mut assemblers: Vec<SectionAssembler> = (0..4).map(|_| SectionAssembler::new()).collect();
    let mut tables = TableSections::new();
    for chunk in data.chunks(PACKET_LEN - 1) {
        let mut p = [0xFFu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1..1 + chunk.len()].copy_from_slice(chunk);
        let Ok(v) = Packet::from_array(&p) else {
            continue;
        };
        let a = &mut assemblers[usize::from(v.pid() & 3)];
        for section in a.push(&v).into_iter().flatten() {
            assert!(section.len() >= 3 && section.len() <= MAX_SECTION_LEN);
            if section[1] & 0x80 != 0 {
                assert_eq!(crc32_mpeg2(&section), 0, "long section with a bad CRC");
            }
            parse(&section);
            // Gathered into whole tables, which parse or give an error.
            if let Ok(Some(all)) = tables.push(&section) {
                let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
                let _ = Pat::from_sections(&refs);
                let _ = Cat::from_sections(&refs);
            }
        }
    }

    // The input as a section payload: packetize and reassemble.
    if data.len() <= MAX_SECTION_LEN - 3 {
        if let Ok(s) = PrivateSection::build(ts::psi::TableId(0x82), data) {
            let mut out = Vec::new();
            let mut cc = data.first().copied().unwrap_or(0);
            packetize(&[&s, &s], 0x100, &mut cc, &mut out).unwrap();
            let mut a = SectionAssembler::new();
            let got: Vec<_> = out
                .iter()
                .flat_map(|p| a.push(&Packet::from_array(p).unwrap()))
                .collect();
            assert_eq!(got, vec![Ok(s.clone()), Ok(s)]);
        }
    }
});
