//! The one way the queue runs a Lua script: `EVALSHA`, loading the script first when Redis does
//! not know it (restarted, or `SCRIPT FLUSH`); optionally followed, in the same round trip, by
//! `WAIT` for replicas.

use super::Connection;
use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs};
use std::sync::OnceLock;

/// A Lua script, hashed on first use.
pub(super) struct Lua {
    source: &'static str,
    script: OnceLock<redis::Script>,
}

impl Lua {
    pub(super) const fn new(source: &'static str) -> Lua {
        Lua {
            source,
            script: OnceLock::new(),
        }
    }

    fn script(&self) -> &redis::Script {
        self.script.get_or_init(|| redis::Script::new(self.source))
    }

    /// A call of this script with these keys; add its arguments with [`Call::arg`]. The command
    /// is built once, by hand: the enqueue script takes thousands of arguments, which
    /// `Script::invoke_async` would copy twice.
    pub(super) fn call(&self, keys: &[&str]) -> Call<'_> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script().get_hash()).arg(keys.len()).arg(keys);
        Call { lua: self, cmd }
    }
}

/// One `EVALSHA` under construction.
pub(super) struct Call<'a> {
    lua: &'a Lua,
    cmd: Cmd,
}

impl Call<'_> {
    /// Adds an argument (`ARGV[n]`, in order).
    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Runs the call; after a `NOSCRIPT` reply, loads the script and runs it once more.
    pub(super) async fn run<T: FromRedisValue>(&self, conn: &mut Connection) -> RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                self.lua.script().prepare_invoke().load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            other => other,
        }
    }

    /// Runs the call and then `WAIT replicas timeout_ms`, pipelined in one round trip on the
    /// same connection (in a cluster, to the node of the script's keys): the script's reply and
    /// how many replicas acknowledged its writes. After `NOSCRIPT`, as [`Call::run`].
    pub(super) async fn run_and_wait<T: FromRedisValue>(
        self,
        conn: &mut Connection,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisResult<(T, u32)> {
        let mut pipe = redis::pipe();
        pipe.add_command(self.cmd)
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout_ms);
        match pipe.query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                self.lua.script().prepare_invoke().load_async(conn).await?;
                pipe.query_async(conn).await
            }
            other => other,
        }
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
