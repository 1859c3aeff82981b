//! Real `kevents run` processes for the demo, drills and benchmarks: each with its own config,
//! admin port and log file, all sharing one store directory and one sink. On a multi-node ground
//! each slot reaches the store through its own node's mount of the share.
//!
//! Owns spawning, signalling (SIGTERM, SIGKILL, SIGSTOP, SIGCONT) and restarting, like a
//! Deployment would. It must never leave a process behind: dropping the set kills what is left.

use std::{
    fs::OpenOptions,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

/// Settings shared by every replica.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// The `kevents` binary.
    pub kevents: PathBuf,
    /// Where configs and logs go.
    pub workdir: PathBuf,
    /// Kubeconfig of the API server.
    pub kubeconfig: PathBuf,
    /// Lease namespace.
    pub lease_namespace: String,
    /// Lease timings, as config strings (`15s`).
    pub lease_duration: String,
    /// Renew deadline.
    pub renew_deadline: String,
    /// Retry period.
    pub retry_period: String,
    /// Config text appended verbatim (sink, store, shipper, record, source sections). With
    /// [`Replicas::start_placed`], every [`STORE_PLACEHOLDER`] in it is replaced by the slot's
    /// store path.
    pub pipeline_yaml: String,
    /// `log.level`.
    pub log_level: String,
}

/// One replica.
#[derive(Debug)]
pub struct Replica {
    /// Its slot.
    pub index: usize,
    /// How many times the slot was started before.
    pub generation: u32,
    /// `leader.identity`.
    pub identity: String,
    /// Admin address.
    pub admin: SocketAddr,
    child: Option<Child>,
}

impl Replica {
    /// The process id, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Stands for the slot's store path in [`ReplicaOptions::pipeline_yaml`] when replicas are
/// placed with [`Replicas::start_placed`].
pub const STORE_PLACEHOLDER: &str = "{store}";

/// A set of replicas.
#[derive(Debug)]
pub struct Replicas {
    options: ReplicaOptions,
    /// `leader.lease_name` of processes started from now on.
    lease_name: String,
    /// The store path of each slot (empty: the pipeline YAML is used as it is).
    stores: Vec<PathBuf>,
    /// The replicas, by slot.
    pub replicas: Vec<Replica>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Replicas {
    /// Starts `count` replicas.
    ///
    /// # Errors
    /// Fails if a config cannot be written or a process cannot be spawned.
    pub fn start(options: ReplicaOptions, count: usize) -> std::io::Result<Self> {
        Self::start_with_stores(options, count, Vec::new())
    }

    /// Starts one replica per entry of `stores`, each with [`STORE_PLACEHOLDER`] in the pipeline
    /// YAML replaced by its own entry (kept across restarts of the slot).
    ///
    /// # Errors
    /// Fails if a config cannot be written or a process cannot be spawned.
    pub fn start_placed(options: ReplicaOptions, stores: Vec<PathBuf>) -> std::io::Result<Self> {
        let count = stores.len();
        Self::start_with_stores(options, count, stores)
    }

    fn start_with_stores(
        options: ReplicaOptions,
        count: usize,
        stores: Vec<PathBuf>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&options.workdir)?;
        let mut set = Self {
            options,
            lease_name: crate::harness::LEASE_NAME.to_owned(),
            stores,
            replicas: Vec::new(),
        };
        for index in 0..count {
            let replica = set.spawn(index, 0)?;
            set.replicas.push(replica);
        }
        Ok(set)
    }

    fn spawn(&self, index: usize, generation: u32) -> std::io::Result<Replica> {
        let o = &self.options;
        let identity = format!("kevents-{index}-g{generation}");
        let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let pipeline = match self.stores.get(index) {
            Some(store) => o
                .pipeline_yaml
                .replace(STORE_PLACEHOLDER, &store.display().to_string()),
            None => o.pipeline_yaml.clone(),
        };
        let config = format!(
            "cluster:\n  name: lab\n  region: local\n  environment: test\n\
             leader:\n  lease_name: {lease}\n  lease_namespace: {ns}\n  identity: {identity}\n  \
             lease_duration: {ld}\n  renew_deadline: {rd}\n  retry_period: {rp}\n\
             admin:\n  listen: {admin}\n\
             log:\n  level: {level}\n\
             shutdown:\n  grace_period: 10s\n{pipeline}",
            ns = o.lease_namespace,
            lease = self.lease_name,
            ld = o.lease_duration,
            rd = o.renew_deadline,
            rp = o.retry_period,
            level = o.log_level,
        );
        let config_path = o
            .workdir
            .join(format!("replica-{index}-g{generation}.yaml"));
        std::fs::write(&config_path, config)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(o.workdir.join(format!("replica-{index}.log")))?;
        let child = Command::new(&o.kevents)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--kubeconfig")
            .arg(&o.kubeconfig)
            .env("POD_NAME", format!("kevents-{index}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Replica {
            index,
            generation,
            identity,
            admin,
            child: Some(child),
        })
    }

    /// Processes started from now on use the Lease `name` (an operator renaming it).
    pub fn set_lease_name(&mut self, name: &str) {
        name.clone_into(&mut self.lease_name);
    }

    /// The Lease name processes are started with.
    #[must_use]
    pub fn lease_name(&self) -> &str {
        &self.lease_name
    }

    /// The slot of the replica whose identity is `holder`.
    #[must_use]
    pub fn slot_of(&self, holder: &str) -> Option<usize> {
        self.replicas
            .iter()
            .find(|r| r.identity == holder && r.child.is_some())
            .map(|r| r.index)
    }

    /// Sends `signal` to the replica in `slot`.
    ///
    /// # Errors
    /// Fails if the process is gone or the signal cannot be sent.
    pub fn signal(&self, slot: usize, signal: Signal) -> std::io::Result<()> {
        let pid = self
            .replicas
            .get(slot)
            .and_then(Replica::pid)
            .ok_or_else(|| std::io::Error::other(format!("replica {slot} is not running")))?;
        let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(std::io::Error::other)
    }

    /// Waits up to `timeout` for the replica in `slot` to exit.
    pub fn wait_exit(&mut self, slot: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.replicas.get_mut(slot)?.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.replicas[slot].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The slots whose process exited on its own (reaped; `pid` is `None` afterwards).
    pub fn exited(&mut self) -> Vec<usize> {
        let mut slots = Vec::new();
        for replica in &mut self.replicas {
            if let Some(child) = replica.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                replica.child = None;
                slots.push(replica.index);
            }
        }
        slots
    }

    /// Starts the slot again as a new process (a new identity), as a Deployment would.
    ///
    /// # Errors
    /// Fails if the process cannot be spawned.
    pub fn restart(&mut self, slot: usize) -> std::io::Result<()> {
        let generation = self.replicas.get(slot).map_or(0, |r| r.generation + 1);
        if let Some(mut child) = self.replicas.get_mut(slot).and_then(|r| r.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let replica = self.spawn(slot, generation)?;
        self.replicas[slot] = replica;
        Ok(())
    }

    /// SIGTERMs every replica, waits for them, and kills stragglers.
    pub fn stop_all(&mut self, timeout: Duration) {
        for slot in 0..self.replicas.len() {
            let _ = self.signal(slot, Signal::SIGCONT);
            let _ = self.signal(slot, Signal::SIGTERM);
        }
        for slot in 0..self.replicas.len() {
            if self.wait_exit(slot, timeout).is_none()
                && let Some(mut child) = self.replicas[slot].child.take()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
