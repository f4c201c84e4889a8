# Debian's Chromium for the browser tests (sourced by .ci/run): installed with apt when missing and this
# runs as root; Playwright drives it through executable_path, so no browser is downloaded.
ensure_chromium() {
    if [ -x /usr/bin/chromium ]; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "Chromium is not installed and cannot be installed here: the browser tests are skipped" >&2
        return 0
    fi
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
        echo "Chromium could not be installed: the browser tests are skipped" >&2
    fi
}
