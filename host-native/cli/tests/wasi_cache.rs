//! `dbguard wasi run` keeps compiled modules in a cache directory across processes: the first
//! run of a module stores it, the next run of the same bytes loads it instead of compiling, a
//! changed module is compiled again, a cache that cannot be created or written costs only the
//! compilation (and one warning), and bad cache settings are refused by name.
//!
//! Each run is a separate `dbguard` process. Whether a run hit the cache is read from the
//! binary's debug log, which reports wasmtime's own hit and miss counters, and from the files
//! in the cache directory; never from how long a run took.
//!
//! The module is the WASI host, built by `host-wasi/build.sh` into `CARGO_TARGET_TMPDIR`;
//! without its toolchain those tests say `SKIP` (and fail under `DBGUARD_REQUIRE_ALL=1`). The
//! WASI host takes most of a minute to compile in a debug build, so the scenarios about keys and
//! settings use an empty module, which compiles in milliseconds.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The debug line of a run that loaded compiled code from the cache.
const HIT: &str = "compile cache hit";
/// The debug line of a run that compiled the module and stored it.
const MISS: &str = "compile cache miss";
/// The warning of a run whose cache cannot be used.
const UNCACHED: &str = "without the compile cache";

/// `dbguard-wasi.wasm` as `host-wasi/build.sh` builds it, or why it cannot be built here.
fn wasi_host() -> Result<&'static Path, &'static str> {
    static MODULE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../host-wasi/build.sh");
            let tools = Command::new("bash").arg(&script).arg("--check").output();
            match tools {
                Ok(tools) if tools.status.success() => {}
                Ok(tools) => return Err(String::from_utf8_lossy(&tools.stderr).trim().replace('\n', "; ")),
                Err(err) => return Err(format!("cannot run {}: {err}", script.display())),
            }
            // The directory tests/tests/wasi_host.rs builds into, so one build serves both.
            let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dbguard-wasi");
            let build = Command::new("bash")
                .arg(&script)
                .env("CARGO_TARGET_DIR", &target_dir)
                .output()
                .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
            // A toolchain that is present but broken is a failure, not a skip.
            assert!(build.status.success(), "host-wasi/build.sh failed:\n{}", String::from_utf8_lossy(&build.stderr));
            Ok(target_dir.join("wasm32-wasip1/release/dbguard-wasi.wasm"))
        })
        .as_deref()
        .map_err(String::as_str)
}

/// The WASI host, or `None` after a loud skip.
fn wasi_host_or_skip(test: &str) -> Option<&'static Path> {
    wasi_host().map_err(|reason| dbguard_tests::skip(test, reason)).ok()
}

/// `dbguard wasi run <module> -- help` in `dir`, with only `vars` set and debug logging of the
/// runner.
fn wasi_run(dir: &Path, module: &Path, vars: &[(&str, &OsStr)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dbguard"));
    command.args(["wasi", "run"]).arg(module).args(["--", "help"]).current_dir(dir).env_clear();
    command.env("DBGUARD_LOG", "dbguard_cli::wasi_run=debug");
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("run dbguard")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the run exited `code` and its log says `expected` (and not `unexpected`).
fn assert_run(output: &Output, code: i32, expected: &str, unexpected: &[&str]) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    for text in unexpected {
        assert!(!stderr.contains(text), "unexpected {text:?} in: {stderr}");
    }
}

/// The compiled-code files below `dir`, sorted: wasmtime's usage statistics and unfinished
/// writes (which its worker thread may add or remove at any time) left out.
fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else { continue };
        for entry in read.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                pending.push(path);
            } else if !name.ends_with(".stats") && !name.contains("wip-") {
                entries.push(path);
            }
        }
    }
    entries.sort();
    entries
}

/// An empty module in `dir` with `extra` appended (a custom section makes another module of
/// the same program). It compiles in milliseconds, then is refused for having no `_start` (65).
fn empty_module(dir: &Path, name: &str, extra: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = vec![0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00];
    bytes.extend(extra);
    std::fs::write(&path, bytes).expect("write the module");
    path
}

/// A custom section named `a` holding `payload` (at most 126 bytes).
fn custom_section(payload: &[u8]) -> Vec<u8> {
    let mut section = vec![0x00, u8::try_from(payload.len() + 2).expect("short payload"), 0x01, b'a'];
    section.extend(payload);
    section
}

#[test]
fn a_second_run_loads_the_module_from_the_cache() {
    let Some(module) = wasi_host_or_skip("a_second_run_loads_the_module_from_the_cache") else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    // Not there yet: the first run creates it.
    let cache = dir.path().join("cache");
    let vars = [("DBGUARD_WASI_CACHE_DIR", cache.as_os_str())];

    let first = wasi_run(dir.path(), module, &vars);
    assert_run(&first, 0, MISS, &[HIT, UNCACHED]);
    let stored = cache_entries(&cache);
    assert_eq!(stored.len(), 1, "one compiled module in {}: {stored:?}", cache.display());

    let second = wasi_run(dir.path(), module, &vars);
    assert_run(&second, 0, HIT, &[MISS, UNCACHED]);
    assert_eq!(cache_entries(&cache), stored, "a hit stores nothing");
    assert_eq!(second.stdout, first.stdout, "the cached code runs the same program");
}

#[test]
fn a_changed_module_is_compiled_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let vars = [("DBGUARD_WASI_CACHE_DIR", cache.as_os_str())];
    let module = empty_module(dir.path(), "m.wasm", &custom_section(b"one"));
    assert_run(&wasi_run(dir.path(), &module, &vars), 65, MISS, &[HIT, UNCACHED]);
    let first = cache_entries(&cache);
    assert_eq!(first.len(), 1, "{first:?}");

    // The same path, size and name; other bytes.
    let module = empty_module(dir.path(), "m.wasm", &custom_section(b"two"));
    assert_run(&wasi_run(dir.path(), &module, &vars), 65, MISS, &[HIT, UNCACHED]);
    let both = cache_entries(&cache);
    assert_eq!(both.len(), 2, "the changed module is stored beside the first: {both:?}");
    assert!(first.iter().all(|entry| both.contains(entry)), "the first entry stays: {both:?}");

    // The same bytes again under another name: a hit, the cache goes by content.
    let again = empty_module(dir.path(), "other.wasm", &custom_section(b"one"));
    assert_run(&wasi_run(dir.path(), &again, &vars), 65, HIT, &[MISS, UNCACHED]);
    assert_eq!(cache_entries(&cache), both);
}

#[test]
fn a_cache_that_cannot_be_written_costs_only_the_compilation() {
    let Some(module) = wasi_host_or_skip("a_cache_that_cannot_be_written_costs_only_the_compilation") else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    // wasmtime stores compiled code under `<cache>/modules/`; a regular file there makes every
    // write fail, for root too, while the directory itself is usable.
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).expect("cache dir");
    std::fs::write(cache.join("modules"), "not a directory").expect("blocking file");

    let output = wasi_run(dir.path(), module, &[("DBGUARD_WASI_CACHE_DIR", cache.as_os_str())]);
    assert_run(&output, 0, UNCACHED, &[HIT, MISS]);
    assert_eq!(stderr(&output).matches(UNCACHED).count(), 1, "said once: {}", stderr(&output));
    assert!(stderr(&output).contains(&cache.display().to_string()), "names the cache: {}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("check"), "the module ran: {output:?}");
    assert_eq!(cache_entries(&cache), [cache.join("modules")], "nothing was stored");
}

#[test]
fn a_cache_directory_that_cannot_be_created_costs_only_the_compilation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let module = empty_module(dir.path(), "empty.wasm", &[]);
    let file = dir.path().join("file");
    std::fs::write(&file, "").expect("file");
    // Below a regular file: no one can create it.
    let cache = file.join("cache");

    let output = wasi_run(dir.path(), &module, &[("DBGUARD_WASI_CACHE_DIR", cache.as_os_str())]);
    assert_run(&output, 65, UNCACHED, &[HIT, MISS]);
    assert_eq!(stderr(&output).matches(UNCACHED).count(), 1, "said once: {}", stderr(&output));
    assert!(stderr(&output).contains("_start"), "the module was compiled and linked: {}", stderr(&output));
}

#[test]
fn the_cache_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let module = empty_module(dir.path(), "empty.wasm", &[]);
    let cache = dir.path().join("cache");
    let on = [("DBGUARD_WASI_CACHE_DIR", cache.as_os_str())];
    let off = [("DBGUARD_WASI_CACHE_DIR", cache.as_os_str()), ("DBGUARD_WASI_CACHE", OsStr::new("Off"))];

    assert_run(&wasi_run(dir.path(), &module, &off), 65, "_start", &[HIT, MISS, UNCACHED]);
    assert!(!cache.exists(), "off writes nothing");
    assert_run(&wasi_run(dir.path(), &module, &on), 65, MISS, &[HIT, UNCACHED]);
    assert_eq!(cache_entries(&cache).len(), 1, "on stores the module");
    // The default location, from HOME.
    let home = dir.path().join("home");
    assert_run(&wasi_run(dir.path(), &module, &[("HOME", home.as_os_str())]), 65, MISS, &[HIT, UNCACHED]);
    assert_eq!(cache_entries(&home.join(".cache/dbguard/wasi")).len(), 1, "stored under HOME");
}

#[test]
fn bad_cache_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Refused before the module is even looked at: it does not exist.
    let module = dir.path().join("none.wasm");
    for (variable, value, says) in [
        ("DBGUARD_WASI_CACHE", "maybe", "expected on or off"),
        ("DBGUARD_WASI_CACHE", "", "expected on or off"),
        ("DBGUARD_WASI_CACHE_DIR", "relative/cache", "expected an absolute directory path"),
        ("DBGUARD_WASI_CACHE_DIR", "", "expected an absolute directory path"),
    ] {
        let output = wasi_run(dir.path(), &module, &[(variable, OsStr::new(value))]);
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(78), "{variable}={value:?}: {stderr}");
        assert!(
            stderr.contains(&format!("configuration error: {variable}: {value:?}")),
            "{variable}={value:?}: {stderr}"
        );
        assert!(stderr.contains(says), "{variable}={value:?}: {stderr}");
    }
}
