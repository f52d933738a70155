//! `kdlab watch STUDY`: a live view of a running sweep in the terminal, redrawn every second until
//! q or Ctrl-C. Plain VT100 (clear, home, the alternate screen), no colour and no terminfo, so it
//! works in an 80×24 terminal, in tmux and over ssh; the terminal is put back as it was on every
//! way out (q, Ctrl-C, an error, a panic).
use crate::study::{config::StudyConfig, runner, watch};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(crate) struct WatchArgs {
    /// The study directory (or its study file).
    pub study: PathBuf,
    /// Seconds between redraws.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Print one frame and exit (also what happens when the output is not a terminal).
    #[arg(long)]
    pub once: bool,
}

/// The study directory of `path`: itself, or the directory its study file names.
fn study_dir(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        let cfg = StudyConfig::load(path)?;
        return Ok(runner::study_dir(&cfg, None));
    }
    Ok(path.to_path_buf())
}

/// Whether the terminal takes UTF-8 (the curves' block characters), as the locale says.
fn utf8_locale() -> bool {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .is_some_and(|v| v.to_ascii_lowercase().replace('-', "").contains("utf8"))
}

/// The terminal's size, 80×24 when it does not say.
fn size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        (ws.ws_col as usize, ws.ws_row as usize)
    } else {
        (80, 24)
    }
}

/// The terminal in watch mode: keys unbuffered and unechoed, Ctrl-C a key (not a signal, so it
/// ends the loop like q and the terminal is restored), the alternate screen, no cursor. Dropped,
/// everything is put back.
struct Screen {
    saved: Option<libc::termios>,
}

impl Screen {
    fn enter() -> Result<Screen> {
        let saved = if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            // SAFETY: tcgetattr/tcsetattr on our own stdin, with termios structs we own.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
                return Err(std::io::Error::last_os_error()).context("reading the terminal's settings");
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            t.c_cc[libc::VMIN] = 0;
            t.c_cc[libc::VTIME] = 0;
            if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setting the terminal up");
            }
            Some(saved)
        } else {
            None
        };
        print!("\x1b[?1049h\x1b[?25l");
        std::io::stdout().flush()?;
        Ok(Screen { saved })
    }

    fn draw(&self, lines: &[String]) -> Result<()> {
        let mut out = String::from("\x1b[H\x1b[2J");
        out.push_str(&lines.join("\r\n"));
        let mut so = std::io::stdout().lock();
        so.write_all(out.as_bytes())?;
        so.flush()?;
        Ok(())
    }

    /// Waits up to `secs` for input; true when it asks to quit (q, Q, Ctrl-C, Ctrl-D, or the end
    /// of the input).
    fn wait_for_quit(&self, secs: f64) -> bool {
        let mut fds = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one pollfd we own.
        let n = unsafe { libc::poll(&mut fds, 1, (secs * 1000.0) as libc::c_int) };
        if n <= 0 {
            return false;
        }
        if fds.revents & (libc::POLLHUP | libc::POLLERR) != 0 && fds.revents & libc::POLLIN == 0 {
            return true;
        }
        let mut buf = [0u8; 64];
        // SAFETY: reading into a buffer we own, at most its length.
        let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if got == 0 && self.saved.is_none() {
            return true; // the end of a non-terminal input
        }
        got > 0 && buf[..got as usize].iter().any(|b| matches!(b, b'q' | b'Q' | 3 | 4))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(t) = self.saved {
            // SAFETY: restoring the settings read at entry.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}

pub fn run(a: WatchArgs) -> Result<()> {
    let dir = study_dir(&a.study)?;
    let utf8 = utf8_locale();
    // A bad directory is said plainly, before the screen is taken over.
    let first = watch::snapshot(&dir)?;
    if a.once || unsafe { libc::isatty(libc::STDOUT_FILENO) } != 1 {
        let (w, h) = if a.once { size() } else { (80, 24) };
        println!("{}", watch::render(&first, w, h, utf8).join("\n"));
        return Ok(());
    }
    let interval = if a.interval.is_finite() && a.interval > 0.0 { a.interval.clamp(0.1, 3600.0) } else { 1.0 };
    let screen = Screen::enter()?;
    let mut snap = Ok(first);
    loop {
        let (w, h) = size();
        let lines = match &snap {
            Ok(s) => watch::render(s, w, h, utf8),
            // The index can be briefly unreadable (a sweep rebuilding it): say so and keep going.
            Err(e) => vec![format!("kdlab watch  {}", dir.display()), format!("cannot read the study now: {e:#}")],
        };
        screen.draw(&lines)?;
        if screen.wait_for_quit(interval) {
            break;
        }
        snap = watch::snapshot(&dir);
    }
    drop(screen);
    Ok(())
}
