//! Who this process is in a run: rotor's own launcher and torchrun set `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; SLURM sets `SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID`, `SLURM_JOB_NODELIST`, `SLURM_JOB_ID` (the master is the first node of the job,
//! the port `MASTER_PORT` or 15000 + the last four digits of the job id, as Lightning does).

/// This worker's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEnv {
    /// Global rank.
    pub rank: usize,
    /// Rank on this node (device ordinal).
    pub local_rank: usize,
    /// Number of workers.
    pub world_size: usize,
    /// Rendezvous host (rank 0's node).
    pub master_addr: String,
    /// Rendezvous port.
    pub master_port: u16,
    /// Where the variables came from.
    pub source: &'static str,
    /// torchrun's agent serves the store at the master address (`TORCHELASTIC_USE_AGENT_STORE`).
    pub agent_store: bool,
    /// The run's id (`TORCHELASTIC_RUN_ID`, `SLURM_JOB_ID`, else `rotor`): store keys live under it.
    pub run_id: String,
    /// Restarts of the group so far (`TORCHELASTIC_RESTART_COUNT`, `SLURM_RESTART_COUNT`).
    pub restart: usize,
    /// Workers per node (`LOCAL_WORLD_SIZE`, `SLURM_NTASKS_PER_NODE`), to name nodes in errors.
    pub local_world: Option<usize>,
}

fn num(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<usize>, String> {
    match get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("environment variable {key}={v:?} is not a number")),
    }
}

/// The first host of a SLURM node list: `node[03-07,09],gpu1` -> `node03`.
pub fn first_host(nodelist: &str) -> String {
    let mut depth = 0;
    let mut end = nodelist.len();
    for (i, c) in nodelist.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let first = &nodelist[..end];
    match first.split_once('[') {
        None => first.to_string(),
        Some((prefix, rest)) => {
            let range = rest.trim_end_matches(']');
            let start = range.split([',', '-']).next().unwrap_or("");
            format!("{prefix}{start}")
        }
    }
}

/// Reads the worker environment; `None` when this process is not one worker of a larger run
/// (no variables, or a world of one).
pub fn detect(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<WorkerEnv>, String> {
    if let (Some(rank), Some(world)) = (num(get, "RANK")?, num(get, "WORLD_SIZE")?) {
        let master_addr =
            get("MASTER_ADDR").ok_or("RANK and WORLD_SIZE are set but MASTER_ADDR is not")?;
        let master_port =
            num(get, "MASTER_PORT")?.ok_or("RANK and WORLD_SIZE are set but MASTER_PORT is not")?;
        let env = WorkerEnv {
            rank,
            local_rank: num(get, "LOCAL_RANK")?.unwrap_or(rank),
            world_size: world,
            master_addr,
            master_port: u16::try_from(master_port)
                .map_err(|_| format!("MASTER_PORT {master_port} is not a port"))?,
            source: if get("TORCHELASTIC_RUN_ID").is_some() {
                "torchrun"
            } else {
                "RANK/WORLD_SIZE"
            },
            agent_store: get("TORCHELASTIC_USE_AGENT_STORE")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            run_id: get("TORCHELASTIC_RUN_ID").unwrap_or_else(|| "rotor".into()),
            restart: num(get, "TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0),
            local_world: num(get, "LOCAL_WORLD_SIZE").ok().flatten(),
        };
        return check(env);
    }
    if let (Some(rank), Some(world)) = (num(get, "SLURM_PROCID")?, num(get, "SLURM_NTASKS")?) {
        let nodes = get("SLURM_JOB_NODELIST")
            .or_else(|| get("SLURM_NODELIST"))
            .ok_or("SLURM_PROCID is set but SLURM_JOB_NODELIST is not")?;
        let port = match num(get, "MASTER_PORT")? {
            Some(p) => p,
            None => {
                let job = get("SLURM_JOB_ID")
                    .ok_or("SLURM_JOB_ID is not set (needed for the rendezvous port)")?;
                let digits: String = job.chars().filter(|c| c.is_ascii_digit()).collect();
                let tail = &digits[digits.len().saturating_sub(4)..];
                15000 + tail.parse::<usize>().unwrap_or(0)
            }
        };
        let env = WorkerEnv {
            rank,
            local_rank: num(get, "SLURM_LOCALID")?.unwrap_or(0),
            world_size: world,
            master_addr: get("MASTER_ADDR").unwrap_or_else(|| first_host(&nodes)),
            master_port: u16::try_from(port)
                .map_err(|_| format!("rendezvous port {port} is not a port"))?,
            source: "SLURM",
            agent_store: false,
            run_id: get("SLURM_JOB_ID").unwrap_or_else(|| "rotor".into()),
            restart: num(get, "SLURM_RESTART_COUNT")?.unwrap_or(0),
            local_world: num(get, "SLURM_NTASKS_PER_NODE").ok().flatten(),
        };
        return check(env);
    }
    Ok(None)
}

fn check(env: WorkerEnv) -> Result<Option<WorkerEnv>, String> {
    if env.world_size == 0 || env.rank >= env.world_size {
        return Err(format!(
            "rank {} is not below the world size {} ({})",
            env.rank, env.world_size, env.source
        ));
    }
    Ok((env.world_size > 1).then_some(env))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn torchrun_environment() {
        let env = detect(&vars(&[
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "8"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "abc"),
        ]))
        .unwrap()
        .unwrap();
        let agent = detect(&vars(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "localhost"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "3f2c"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert!(agent.agent_store);
        assert_eq!((agent.run_id.as_str(), agent.restart), ("3f2c", 2));
        assert_eq!(agent.local_world, Some(2));
        assert_eq!(
            env,
            WorkerEnv {
                rank: 3,
                local_rank: 1,
                world_size: 8,
                master_addr: "node7".into(),
                master_port: 29500,
                source: "torchrun",
                agent_store: false,
                run_id: "abc".into(),
                restart: 0,
                local_world: None,
            }
        );
    }

    #[test]
    fn slurm_environment_derives_master_and_port() {
        let env = detect(&vars(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[012-015,020],cpu3"),
            ("SLURM_JOB_ID", "4412345"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((env.rank, env.local_rank, env.world_size), (5, 1, 16));
        assert_eq!(env.master_addr, "gpu012");
        assert_eq!(env.master_port, 15000 + 2345);
        assert_eq!(env.source, "SLURM");
        assert_eq!(first_host("node1,node2"), "node1");
        assert_eq!(first_host("a[7]"), "a7");
    }

    #[test]
    fn single_process_and_bad_values() {
        assert_eq!(detect(&vars(&[])).unwrap(), None);
        assert_eq!(
            detect(&vars(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("MASTER_ADDR", "x"),
                ("MASTER_PORT", "1")
            ]))
            .unwrap(),
            None
        );
        assert!(
            detect(&vars(&[
                ("RANK", "2"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "x"),
                ("MASTER_PORT", "1")
            ]))
            .is_err()
        );
        let err = detect(&vars(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(err.contains("RANK"), "{err}");
        let err = detect(&vars(&[("RANK", "0"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(err.contains("MASTER_ADDR"), "{err}");
    }
}
