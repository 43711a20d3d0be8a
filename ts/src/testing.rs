//! Test support shared by the workspace's stream tests (feature
//! `testing`): real MPEG-TS made by ffmpeg, as the brief asks for.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// A clear TS made by ffmpeg: H.264 test pattern and AAC 1 kHz sine, `secs`
/// long (program 1, PMT 0x1000, video 0x100 with the PCR, audio 0x101).
/// Each length is made once per test process. `None` (the caller skips,
/// with a note printed here) when ffmpeg is missing or fails, unless
/// `CI=true`, where that panics: the stream tests must not pass without it.
pub fn ffmpeg_ts(secs: u32) -> Option<Vec<u8>> {
    static CACHE: OnceLock<Mutex<HashMap<u32, Option<Vec<u8>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    c.entry(secs).or_insert_with(|| make_ts(secs)).clone()
}

fn make_ts(secs: u32) -> Option<Vec<u8>> {
    let run = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000"])
        .args(["-t", &secs.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"])
        .args(["-f", "mpegts", "pipe:1"])
        .output();
    let why = match run {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => return Some(o.stdout),
        Ok(o) => format!(
            "ffmpeg failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("ffmpeg not found ({e}); install it with `apt-get install ffmpeg`"),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the stream tests need ffmpeg to make a real TS: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}
