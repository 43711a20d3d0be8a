//! Real MPEG-TS for the stream tests, made by ffmpeg: an H.264 test
//! pattern and an AAC sine in program 1 (PMT on PID 0x1000, video on
//! 0x100 with the PCR, audio on 0x101), and ffprobe to count the video
//! frames that decode.
//!
//! Without ffmpeg a test fails under `CI=true` and is skipped otherwise
//! (see [`env`](mod@crate::env)).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// ffmpeg's program number, and its PIDs.
pub const PROGRAM: u16 = 1;
pub const PMT_PID: u16 = 0x1000;
pub const VIDEO_PID: u16 = 0x100;
pub const AUDIO_PID: u16 = 0x101;

/// Why ffmpeg or ffprobe cannot be run, each with the fix; empty when
/// both can.
pub fn missing() -> Vec<String> {
    let mut why = Vec::new();
    for tool in ["ffmpeg", "ffprobe"] {
        match Command::new(tool).arg("-version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => why.push(format!("`{tool} -version` failed: {}", o.status)),
            Err(e) => why.push(format!(
                "{tool}: {e}; install it with `apt-get install ffmpeg`"
            )),
        }
    }
    why
}

/// A clear TS `secs` long (test pattern at 320x240 and 25 frames/s, 1 kHz
/// sine), made once per length per test process. `None` (the caller
/// returns: the test is skipped, with a note printed here) when ffmpeg is
/// missing or fails outside CI; under `CI=true` that panics.
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
    crate::env::unavailable(
        "the stream tests (they need ffmpeg to make a real TS)",
        &why,
    );
    None
}

/// The programs of [`mpts`]: (program_number, service name, PMT PID,
/// video PID with the PCR, audio PID).
pub const MPTS_PROGRAMS: [(u16, &str, u16, u16, u16); 3] = [
    (1, "One", 0x1000, 0x100, 0x101),
    (2, "Two", 0x1001, 0x102, 0x103),
    (3, "Three", 0x1002, 0x104, 0x105),
];

/// A clear multi-program TS `secs` long, made once per length per test
/// process: three programs (see [`MPTS_PROGRAMS`]), each an H.264 test
/// pattern of its own at 160x120 and 25 frames/s (an IDR picture every
/// second) and an AAC sine, named in ffmpeg's SDT (which calls them all
/// free-to-air). `None` as for [`ffmpeg_ts`].
///
/// The recipe: one lavfi input per stream, every stream mapped, and one
/// `-program program_num=N:title=NAME:st=V:st=A` per program; ffmpeg
/// numbers the PMT PIDs from 0x1000 and the streams from 0x100 in map
/// order.
pub fn mpts(secs: u32) -> Option<Vec<u8>> {
    static CACHE: OnceLock<Mutex<HashMap<u32, Option<Vec<u8>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    c.entry(secs).or_insert_with(|| make_mpts(secs)).clone()
}

fn make_mpts(secs: u32) -> Option<Vec<u8>> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-loglevel", "error", "-y"]);
    let sources = [
        ("testsrc=size=160x120:rate=25", 1000),
        ("testsrc2=size=160x120:rate=25", 500),
        ("smptebars=size=160x120:rate=25", 250),
    ];
    for (video, tone) in sources {
        cmd.args(["-f", "lavfi", "-i", video]);
        cmd.args(["-f", "lavfi", "-i", &format!("sine=frequency={tone}")]);
    }
    cmd.args(["-t", &secs.to_string()]);
    for i in 0..sources.len() * 2 {
        cmd.args(["-map", &format!("{i}:0")]);
    }
    // An IDR picture every second (x264's default is every 10 s), so
    // that a receiver that joins at a random access point starts soon.
    cmd.args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25"]);
    cmd.args(["-c:a", "aac"]);
    for (i, (n, name, ..)) in MPTS_PROGRAMS.iter().enumerate() {
        cmd.args([
            "-program",
            &format!("program_num={n}:title={name}:st={}:st={}", 2 * i, 2 * i + 1),
        ]);
    }
    cmd.args(["-f", "mpegts", "pipe:1"]);
    let why = match cmd.output() {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => return Some(o.stdout),
        Ok(o) => format!(
            "ffmpeg failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("ffmpeg not found ({e}); install it with `apt-get install ffmpeg`"),
    };
    crate::env::unavailable(
        "the multiplex tests (they need ffmpeg to make a real multi-program TS)",
        &why,
    );
    None
}

/// What ffprobe's `-show_programs` says of each program of `file`:
/// (program_number, service_name from the SDT, if any). `None` without
/// ffprobe, as for [`ffprobe_frames`].
pub fn ffprobe_programs(file: &Path) -> Option<Vec<(u16, Option<String>)>> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_programs", "-of", "json"])
        .arg(file)
        .output();
    let why = match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value =
                serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("ffprobe's JSON: {e}"));
            let programs = v["programs"].as_array().cloned().unwrap_or_default();
            return Some(
                programs
                    .iter()
                    .map(|p| {
                        (
                            p["program_id"].as_u64().unwrap_or(0) as u16,
                            p["tags"]["service_name"].as_str().map(str::to_owned),
                        )
                    })
                    .collect(),
            );
        }
        Ok(o) => format!(
            "ffprobe failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("ffprobe not found ({e}); install it with `apt-get install ffmpeg`"),
    };
    crate::env::unavailable(
        "the multiplex tests (they read the SDT back with ffprobe)",
        &why,
    );
    None
}

/// A clear TS of `secs` from the lavfi `video` source (e.g.
/// `testsrc2=size=320x240:rate=25`) and a sine of `tone` Hz, written to
/// `out` and returned. ffmpeg must be there: check [`missing`] first.
pub fn clip(out: &Path, secs: u32, video: &str, tone: u32) -> Vec<u8> {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", video])
        .args(["-f", "lavfi", "-i", &format!("sine=frequency={tone}")])
        .args(["-t", &secs.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"])
        .args(["-f", "mpegts"])
        .arg(out)
        .output()
        .expect("ffmpeg (apt-get install ffmpeg)");
    assert!(
        o.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
}

/// Video frames that ffprobe decodes in `file`, and whatever it said on
/// stderr (empty when it decoded without error). `None` without ffprobe
/// outside CI (a note is printed); under `CI=true` that panics.
pub fn ffprobe_frames(file: &Path) -> Option<(u64, String)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(file)
        .output();
    match out {
        Ok(o) => {
            // One line per stream section (and per program): the first
            // number is the video stream's.
            let frames = String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.trim().trim_end_matches(',').parse().ok())
                .unwrap_or(0);
            Some((frames, String::from_utf8_lossy(&o.stderr).into_owned()))
        }
        Err(e) => {
            crate::env::unavailable(
                "the ffprobe check",
                &format!("ffprobe: {e}; install it with `apt-get install ffmpeg`"),
            );
            None
        }
    }
}
