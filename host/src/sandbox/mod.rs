//! Runs plugin components: one wasmtime engine with an epoch ticker, components compiled once
//! and cached, and a fresh, capped instance per call.

mod cache;
mod host;
mod http;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Trap,
};
use wasmtime_wasi::WasiCtx;

use crate::database::Database;

pub use actions::{
    ActionError, ActionSpec, Exit, Invocation, Param, ParamKind, ParamSpec, ParamValue, RunResult,
};
pub use bindings::pulse::plugin::slack::ShareOutcome;
pub use host::{CallState, Progress, RunSink};
pub use http::{Egress, origin_of};

/// Bindings generated from `wit/`: the `integration` world as the host sees it.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "integration",
        path: "../wit",
        imports: { "pulse:plugin/slack.share-output": async },
        exports: { default: async },
    });
}

use bindings::exports::pulse::plugin::{actions, lifecycle, webhooks};
pub use bindings::pulse::plugin::types::{ApiError, Context, KeyValue, Pulse, Timestamp};
pub use lifecycle::{AppError, AppStatus, LifecycleError};
pub use webhooks::{Delivery, DeliveryError, Header, Outcome};

/// How much a single call may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The cap on each instance's linear memory.
    pub memory_bytes: usize,
    /// How long one delivery may take, CPU or waiting.
    pub deadline: Duration,
    /// How long a lifecycle call may take: it makes several API requests, and may wait out
    /// a rate limit.
    pub lifecycle_deadline: Duration,
    /// How long an action's run may take in all: its command's longest timeout (30
    /// minutes) and time to start the dyno and share the output.
    pub action_deadline: Duration,
    /// How many calls may run at once; also the size of the instance pool.
    pub concurrency: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            deadline: Duration::from_secs(2),
            lifecycle_deadline: Duration::from_secs(120),
            action_deadline: Duration::from_secs(40 * 60),
            concurrency: 64,
        }
    }
}

/// How often the epoch advances: how long a computing guest runs before it yields.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Slots reserved up front and reused: the fast path.
    Pooling,
    /// Memory mapped per instance, when the pool's address space could not be reserved.
    OnDemand,
}

/// A wasmtime engine configured for plugins, with the thread that drives its deadlines.
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    allocation: Allocation,
    ticker: Option<Ticker>,
}

/// Failures loading a plugin; the messages say which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("creating the wasmtime engine failed: {0:#}")]
    Engine(wasmtime::Error),
    #[error("reading the plugin {path} failed: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("compiling the plugin failed (is it a WASI 0.2 component?): {0:#}")]
    Compile(wasmtime::Error),
    #[error(
        "the plugin does not fit the pulse:plugin/integration@0.1.0 world the host provides: \
         {0:#}"
    )]
    World(wasmtime::Error),
}

/// Why a call did not return a result from the plugin. Each fails that call only.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("all {0} plugin slots are busy")]
    Busy(u32),
    #[error("the plugin ran past its {0:?} deadline")]
    TimedOut(Duration),
    #[error("the plugin trapped: {0}")]
    Trapped(String),
}

impl Runtime {
    /// Creates the engine, with a pooling allocator sized to `limits` when the address space
    /// can be reserved, and on-demand allocation otherwise.
    pub fn new(limits: Limits) -> Result<Runtime, LoadError> {
        let (engine, allocation) = match Engine::new(&engine_config(limits, Allocation::Pooling)) {
            Ok(engine) => (engine, Allocation::Pooling),
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"),
                    "could not reserve the instance pool; allocating instances on demand"
                );
                let config = engine_config(limits, Allocation::OnDemand);
                (
                    Engine::new(&config).map_err(LoadError::Engine)?,
                    Allocation::OnDemand,
                )
            }
        };
        let ticker = Ticker::start(engine.clone());
        Ok(Runtime {
            engine,
            limits,
            allocation,
            ticker: Some(ticker),
        })
    }

    /// How instances get their memory on this machine.
    pub fn allocation(&self) -> Allocation {
        self.allocation
    }

    /// Loads a component from `bytes`, compiling it unless `cache_dir` holds a compiled copy
    /// made by this wasmtime with this configuration.
    pub fn load(&self, bytes: &[u8], cache_dir: &Path) -> Result<Plugin, LoadError> {
        let component = cache::load_or_compile(&self.engine, bytes, cache_dir)?;

        let mut linker = Linker::<CallState>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(LoadError::World)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(LoadError::World)?;
        bindings::Integration::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(LoadError::World)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(LoadError::World)?;
        let pre = bindings::IntegrationPre::new(pre).map_err(LoadError::World)?;

        Ok(Plugin {
            engine: self.engine.clone(),
            pre,
            limits: self.limits,
            slots: Arc::new(Semaphore::new(self.limits.concurrency as usize)),
        })
    }

    /// Loads the component at `path`.
    pub fn load_file(&self, path: &Path, cache_dir: &Path) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes, cache_dir)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

fn engine_config(limits: Limits, allocation: Allocation) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Reserve only what the cap allows instead of wasmtime's 4 GiB per memory, so a pool of
    // `concurrency` slots fits in a container's address space. Bounds checks are then explicit.
    let memory = limits.memory_bytes as u64;
    config.memory_reservation(memory);
    config.memory_reservation_for_growth(0);
    config.memory_guard_size(64 << 10);
    config.max_wasm_stack(1 << 20);

    if allocation == Allocation::Pooling {
        let slots = limits.concurrency;
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component is a few core instances (the program plus small shims) sharing
        // one memory; leave room for plugins built with other toolchains.
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .total_stacks(slots)
            .max_memories_per_component(2)
            .max_memory_size(limits.memory_bytes)
            // Give returned slots' memory back to the kernel several at a time: each
            // `madvise` interrupts the other cores to flush their TLBs, which cost a fifth of
            // the throughput under load. Memory of the last few slots returned stays resident
            // until the batch fills (a few deliveries later).
            .decommit_batch_size(16);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// A loaded plugin, ready to instantiate for each call.
#[derive(Clone)]
pub struct Plugin {
    engine: Engine,
    pre: bindings::IntegrationPre<CallState>,
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl Plugin {
    /// Hands one delivery to a fresh instance of the plugin. The instance can reach only
    /// `integration`'s storage and no network, and is dropped afterwards whatever happened.
    pub async fn handle_delivery(
        &self,
        database: &Database,
        context: &Context,
        delivery: &Delivery,
    ) -> Result<Result<Outcome, DeliveryError>, CallError> {
        let deadline = self.limits.deadline;
        self.call(
            database,
            &context.integration,
            Egress::default(),
            None,
            deadline,
            async |plugin, store| {
                plugin
                    .pulse_plugin_webhooks()
                    .call_handle(store, context, delivery)
                    .await
            },
        )
        .await
    }

    /// Asks the plugin to make the remote service match the integration's settings; it may
    /// reach `egress`.
    pub async fn apply_settings(
        &self,
        database: &Database,
        context: &Context,
        egress: Egress,
    ) -> Result<Result<Vec<AppStatus>, LifecycleError>, CallError> {
        let deadline = self.limits.lifecycle_deadline;
        self.call(
            database,
            &context.integration,
            egress,
            None,
            deadline,
            async |plugin, store| {
                plugin
                    .pulse_plugin_lifecycle()
                    .call_apply_settings(store, context)
                    .await
            },
        )
        .await
    }

    /// Asks the plugin to remove what it set up on the remote service.
    pub async fn disconnect(
        &self,
        database: &Database,
        context: &Context,
        egress: Egress,
    ) -> Result<Result<Vec<AppStatus>, LifecycleError>, CallError> {
        let deadline = self.limits.lifecycle_deadline;
        self.call(
            database,
            &context.integration,
            egress,
            None,
            deadline,
            async |plugin, store| {
                plugin
                    .pulse_plugin_lifecycle()
                    .call_disconnect(store, context)
                    .await
            },
        )
        .await
    }

    /// The actions the plugin offers.
    pub async fn describe(&self, database: &Database) -> Result<Vec<ActionSpec>, CallError> {
        let deadline = self.limits.deadline;
        self.call(
            database,
            "(describe)",
            Egress::default(),
            None,
            deadline,
            async |plugin, store| plugin.pulse_plugin_actions().call_describe(store).await,
        )
        .await
    }

    /// Runs an action to its end; it may reach `egress`, and writes its output to `sink`.
    pub async fn invoke(
        &self,
        database: &Database,
        context: &Context,
        invocation: &Invocation,
        egress: Egress,
        sink: RunSink,
    ) -> Result<Result<RunResult, ActionError>, CallError> {
        let deadline = self.limits.action_deadline;
        self.call(
            database,
            &context.integration,
            egress,
            Some(sink),
            deadline,
            async |plugin, store| {
                plugin
                    .pulse_plugin_actions()
                    .call_invoke(store, context, invocation)
                    .await
            },
        )
        .await
    }

    /// Runs `call` on a fresh instance with the call's limits.
    async fn call<R>(
        &self,
        database: &Database,
        integration: &str,
        egress: Egress,
        run: Option<RunSink>,
        deadline: Duration,
        call: impl AsyncFnOnce(&bindings::Integration, &mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let _slot = self
            .slots
            .try_acquire()
            .map_err(|_| CallError::Busy(self.limits.concurrency))?;
        let started = Instant::now();
        let mut store = self.store(database, integration, egress, run);

        let run = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            call(&instance, &mut store).await
        };
        // The guest yields at each epoch tick (see `store`), so this timer stops a guest that
        // computes as well as one that waits on a host call.
        let result = match tokio::time::timeout(deadline, run).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(err)) => Err(classify(err)),
            Err(_) => Err(CallError::TimedOut(deadline)),
        };
        tracing::debug!(integration, elapsed = ?started.elapsed(), "plugin call finished");
        result
    }

    fn store(
        &self,
        database: &Database,
        integration: &str,
        egress: Egress,
        run: Option<RunSink>,
    ) -> Store<CallState> {
        let limits: StoreLimits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(16)
            .tables(16)
            .memories(2)
            .build();
        // A WASI context that grants nothing: no files, environment, arguments or sockets.
        let state = CallState {
            wasi: WasiCtx::builder().build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks: http::OutboundHooks {
                egress,
                integration: integration.to_string(),
                log_streams: Default::default(),
            },
            table: ResourceTable::new(),
            limits,
            integration: integration.to_string(),
            database: database.clone(),
            run,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // At every epoch tick a guest that is computing yields to the executor, so it shares
        // its worker thread with other requests instead of holding it for its whole deadline;
        // the deadline itself is the timer around the call, which drops the suspended guest.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// A guest never traps on its deadline (it yields at each epoch tick and the timer drops it),
/// so every error here is a trap or a host failure.
fn classify(err: wasmtime::Error) -> CallError {
    match err.downcast_ref::<Trap>() {
        Some(trap) => CallError::Trapped(format!("{trap}")),
        None => CallError::Trapped(format!("{err:#}")),
    }
}

/// Advances the engine's epoch on a plain thread, so a computing guest yields its worker at
/// every tick even when every async worker is busy running guests.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker thread");
        Ticker { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
