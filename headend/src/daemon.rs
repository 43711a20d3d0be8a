//! `headend run`: load the config and the keys, open the database, then
//! run the scheduler (CWs, renewals, ECMs, EMM carousel), the channel
//! streams (through the [`Supervisor`]) and the admin API until SIGTERM or
//! SIGINT.
//!
//! A `[[channels]]` table of headend.toml that fails the channel checks
//! stops the start (exit 64, naming the file and the field); a channel
//! stored in the database never does: the supervisor turns it off and
//! reports it.
//!
//! The stream engine embeds it the same way: [`Daemon::open`], take
//! [`Daemon::output`] (the [`CaOutput`] to multiplex), then
//! [`Daemon::serve`].

use crate::atrest::MasterKey;
use crate::config::{Config, ConfigError, Loaded};
use crate::init::{ensure_scrape_token, read_master_key, read_token, KeyFileError};
use crate::metrics::Metrics;
use crate::output::CaOutput;
use crate::server::{self, AppState};
use crate::simulcrypt::ecmg::{self, Ecmg};
use crate::simulcrypt::MuxPeers;
use crate::state::{Headend, StateError, Timing};
use crate::supervisor::Supervisor;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The environment variable that shifts the headend's clock by this many
/// milliseconds (may be negative). **For tests only**: it lets a test
/// make the clock jump without touching the system clock. Never set it in
/// production.
pub const TEST_CLOCK_OFFSET_ENV: &str = "IODOFORM_TEST_CLOCK_OFFSET_MS";

/// Unix time in milliseconds (shifted by [`TEST_CLOCK_OFFSET_ENV`] in
/// tests).
pub fn now_ms() -> u64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let offset = *OFFSET.get_or_init(|| {
        std::env::var(TEST_CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    });
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    real.saturating_add_signed(offset)
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// An invalid config (exit status 64).
    #[error("invalid config: {0}")]
    Config(String),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Headend(StateError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API: {0}")]
    Serve(std::io::Error),
}

impl DaemonError {
    /// The process exit status for this error (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) => 64,
            DaemonError::KeyFile(_) => 66,
            DaemonError::Listen { .. } => 69,
            DaemonError::Headend(StateError::Store(crate::store::StoreError::Locked)) => 75,
            _ => 70,
        }
    }
}

impl From<ConfigError> for DaemonError {
    fn from(e: ConfigError) -> Self {
        DaemonError::Config(e.to_string())
    }
}

impl From<StateError> for DaemonError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Config { .. } => DaemonError::Config(e.to_string()),
            other => DaemonError::Headend(other),
        }
    }
}

/// A loaded headend, ready to serve.
#[derive(Debug)]
pub struct Daemon {
    loaded: Loaded,
    headend: Arc<Mutex<Headend>>,
    token: Arc<Zeroizing<String>>,
    scrape_token: Arc<Zeroizing<String>>,
    metrics: Arc<Metrics>,
    output: CaOutput,
    supervisor: Arc<Supervisor>,
    muxes: MuxPeers,
    run: u64,
    /// The SimulCrypt ECMG, when `[simulcrypt.ecmg]` is configured.
    ecmg: Option<Ecmg>,
}

impl Daemon {
    /// Loads the config file, then [`Daemon::open`].
    pub fn open_config(path: &Path) -> Result<Daemon, DaemonError> {
        let loaded = Config::load(path)?;
        Daemon::open(loaded)
    }

    /// Reads the keys, opens the database (starting a new run) and loads
    /// the state. Nothing is emitted yet.
    pub fn open(loaded: Loaded) -> Result<Daemon, DaemonError> {
        let c = &loaded.config;
        let master = read_master_key(&loaded.master_key())?;
        let token = read_token(&loaded.token())?;
        let (scrape_token, made) = ensure_scrape_token(&loaded.scrape_token())?;
        if made {
            tracing::info!(
                path = %loaded.scrape_token().display(),
                "made the read-only scrape token for /metrics (give it to Prometheus, not the admin token)"
            );
        }
        let metrics = Arc::new(Metrics::default());
        let output = CaOutput::new().with_emm_bitrate(c.emm_bitrate);
        let timing = Timing {
            period_ms: c.crypto_period_ms,
            renewal_ms: c.key_renewal_secs.saturating_mul(1000),
            cycle_ms: c.emm_cycle_ms,
            emm_bitrate: c.emm_bitrate,
        };
        // headend.toml's channels, with the checks an API channel gets:
        // against each other and against the files they name.
        // (A `scrambler = "simulcrypt"` channel has no stream here: the
        // ECMG serves it.)
        let mux_channels = c.mux_channels();
        let specs: Vec<_> = mux_channels.iter().map(|ch| ch.spec()).collect();
        for (i, ch) in specs.iter().enumerate() {
            crate::config::check_channel(ch, &specs[..i], &loaded.dir).map_err(|p| {
                DaemonError::Config(format!(
                    "{}: field `channels[{i}].{}`: channel {:?}: {}",
                    loaded.path.display(),
                    p.field,
                    ch.name,
                    p.message
                ))
            })?;
        }
        let db = loaded.database();
        if !db.exists() {
            return Err(DaemonError::Config(format!(
                "{}: field `database`: {} does not exist (run `headend init`?)",
                loaded.path.display(),
                db.display()
            )));
        }
        // A state error that names a field of headend.toml is the config's.
        let state_err = |e| match e {
            StateError::Config { field, message } => DaemonError::Config(format!(
                "{}: field `{field}`: {message}",
                loaded.path.display()
            )),
            other => DaemonError::Headend(other),
        };
        let core = Headend::open(
            &db,
            MasterKey::new(&master),
            c.operator_id,
            timing,
            &mux_channels,
            output.clone(),
            metrics.clone(),
            now_ms(),
        )
        .map_err(state_err)?;
        let run = core.run();
        let mut core = core;
        core.set_channel_base(&loaded.dir);
        core.set_clock_policy(c.max_clock_jump_secs.saturating_mul(1000), false);
        let supervisor = Arc::new(Supervisor::new(output.clone(), &loaded.dir));
        {
            let sup = supervisor.clone();
            metrics.add_collector(Arc::new(move |e| sup.render_metrics(e)));
        }
        let muxes = MuxPeers::new(&c.simulcrypt.mux, c.emm_cycle_ms);
        {
            let m = muxes.clone();
            metrics.add_collector(Arc::new(move |e| m.render_metrics(e)));
        }
        let mut services = Vec::new();
        for ch in c.channels.iter().filter(|ch| !ch.scrambler.is_mux()) {
            let product = core
                .ensure_product(&ch.product, now_ms())
                .map_err(state_err)?;
            services.push(ecmg::Service {
                name: ch.name.clone(),
                product,
                product_name: ch.product.clone(),
                service: ch.service_id,
                maturity: ch.maturity,
            });
        }
        let headend = Arc::new(Mutex::new(core));
        let ecmg = c.simulcrypt.ecmg.clone().map(|cfg| {
            let e = Ecmg::new(cfg, services, headend.clone(), now_ms);
            e.refresh(&headend.lock().unwrap_or_else(|p| p.into_inner()));
            let m = e.clone();
            metrics.add_collector(Arc::new(move |x| m.render_metrics(x)));
            e
        });
        Ok(Daemon {
            loaded,
            headend,
            token: Arc::new(token),
            scrape_token: Arc::new(scrape_token),
            metrics,
            output,
            supervisor,
            muxes,
            run,
            ecmg,
        })
    }

    /// Accepts a clock jump found at the first step (`headend run
    /// --accept-clock-jump`): the operator has checked the clock.
    pub fn accept_clock_jump_at_start(&self) {
        let max = self.loaded.config.max_clock_jump_secs.saturating_mul(1000);
        self.headend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_clock_policy(max, true);
    }

    /// The ECM and EMM sections this daemon produces.
    pub fn output(&self) -> CaOutput {
        self.output.clone()
    }

    pub fn run_number(&self) -> u64 {
        self.run
    }

    /// The shared state, for embedding (e.g. the stream engine's status).
    pub fn headend(&self) -> Arc<Mutex<Headend>> {
        self.headend.clone()
    }

    /// The owner of the channel streams.
    pub fn supervisor(&self) -> Arc<Supervisor> {
        self.supervisor.clone()
    }

    /// Binds the admin API and runs the scheduler and the channel streams
    /// until `shutdown` resolves; then stops accepting requests, lets those
    /// in flight finish, stops the streams, and stops the scheduler after
    /// its current step.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        let cfg = &self.loaded.config;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(DaemonError::Serve)?;
        // The SimulCrypt ECMG, on its own port.
        let ecmg_task = match &self.ecmg {
            Some(e) => {
                let l = e.bind().await.map_err(|source| DaemonError::Listen {
                    addr: cfg.simulcrypt.ecmg.as_ref().map_or(addr, |c| c.listen),
                    source,
                })?;
                let at = l.local_addr().map_err(DaemonError::Serve)?;
                tracing::info!(
                    addr = %at,
                    super_cas_id = %format!("0x{:08x}", e.super_cas_id()),
                    "SimulCrypt ECMG listening"
                );
                Some(tokio::spawn(e.clone().serve(l)))
            }
            None => None,
        };

        // The scheduler: a step every quarter period, at most every 50 ms.
        let tick = Duration::from_millis((cfg.crypto_period_ms / 4).clamp(10, 50));
        let stop = Arc::new(AtomicBool::new(false));
        let scheduler = {
            let core = self.headend.clone();
            let stop = stop.clone();
            let metrics = self.metrics.clone();
            let ecmg = self.ecmg.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(tick);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::SeqCst) {
                    interval.tick().await;
                    let core = core.clone();
                    let ecmg = ecmg.clone();
                    let step = tokio::task::spawn_blocking(move || {
                        let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
                        let r = c.tick(now_ms());
                        if let Some(e) = &ecmg {
                            e.refresh(&c);
                        }
                        r
                    })
                    .await;
                    match step {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            Metrics::inc(&metrics.internal_errors);
                            tracing::error!(error = %e, "scheduler step failed");
                        }
                        Err(e) => {
                            // A panic in the state: it can no longer be
                            // trusted. Exit and let the supervisor restart us
                            // from the database.
                            tracing::error!(error = %e, "scheduler panicked; exiting");
                            std::process::exit(70);
                        }
                    }
                }
            })
        };

        // The channel streams, started, changed and stopped by the
        // supervisor thread.
        let supervisor = self
            .supervisor
            .spawn(self.headend.clone())
            .map_err(DaemonError::Serve)?;

        // The EMMG clients, one thread per MUX.
        let mux_stop = Arc::new(AtomicBool::new(false));
        let mux_threads = self.muxes.spawn(&self.output, &mux_stop);

        let state = AppState {
            headend: self.headend.clone(),
            token: self.token.clone(),
            scrape_token: self.scrape_token.clone(),
            metrics: self.metrics.clone(),
            output: self.output.clone(),
            supervisor: self.supervisor.clone(),
            muxes: self.muxes.clone(),
            run: self.run,
            now_ms,
            ecmg: self.ecmg.clone(),
        };
        let app = server::router(state);
        tracing::info!(%addr, run = self.run, "headend serving");
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Some(t) = ecmg_task {
            t.abort();
        }
        self.supervisor.shutdown();
        let _ = tokio::task::spawn_blocking(move || supervisor.join()).await;
        mux_stop.store(true, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(move || {
            for t in mux_threads {
                let _ = t.join();
            }
        })
        .await;
        stop.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(5), scheduler).await;
        tracing::info!("headend stopped");
        served.map_err(DaemonError::Serve)
    }
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
