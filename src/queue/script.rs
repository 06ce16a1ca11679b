//! The one way the queue runs a Lua script: `EVALSHA`, loading the script first when Redis does
//! not know it (restarted, or `SCRIPT FLUSH`).

use redis::aio::ConnectionManager;
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
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.lua.script().prepare_invoke().load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            other => other,
        }
    }
}
