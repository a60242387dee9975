# The client matrix, run as one `egress exec` step or after `eval "$(egress env --grant TOKEN)"`
# (sourced after the test's variables).
# Every client makes three requests and prints one line for each:
#   RESULT <client> <allow|block|host> <status> <x-egress-blocked> <json reason> <http version>
# or  RESULT <client> <kind> error <message>; then  RESULT <client> exit <code>  per program.
# allow: a covered URL (the upstream must get the injected secret, not "sandbox-guess");
# block: a path on a covered host that no connector covers; host: a host none covers.
AUTH="Authorization: Bearer sandbox-guess"
T=$(mktemp -d)

finish() {  # NAME CODE: the program's exit code and the tail of its stderr
  echo "RESULT $1 exit $2"
  tail -c 1500 "$T/$1.err" 2>/dev/null | sed "s/^/STDERR $1 /"
}

url() {  # KIND CLIENT
  case $1 in
    allow) echo "${MATRIX_ALLOW//\{client\}/$2}" ;;
    block) echo "${MATRIX_BLOCK//\{client\}/$2}" ;;
    host) echo "${MATRIX_HOST//\{client\}/$2}" ;;
  esac
}

curl_client() {  # NAME CURL-FLAGS...
  name=$1; shift
  for kind in allow block host; do
    if curl -sS --max-time 20 "$@" -H "$AUTH" -D "$T/h" -o "$T/b" -w '%{http_code} %{http_version}' \
      "$(url $kind "$name")" >"$T/w" 2>"$T/$name.err"; then
      blocked=$(tr -d '\r' <"$T/h" | sed -n 's/^[Xx]-[Ee]gress-[Bb]locked: *//p' | head -n1)
      reason=$(sed -n 's/.*"reason": *"\([^"]*\)".*/\1/p' "$T/b")
      read -r code version <"$T/w"
      echo "RESULT $name $kind $code ${blocked:--} ${reason:--} $version"
    else
      echo "RESULT $name $kind error curl exit $?: $(tr '\n' ' ' <"$T/$name.err" | head -c 300)"
    fi
  done
  finish "$name" 0
}

wget_client() {
  for kind in allow block host; do
    rm -f "$T/b"
    wget -q -S --content-on-error --timeout=20 --tries=1 --header="$AUTH" -O "$T/b" "$(url $kind wget)" 2>"$T/h"
    rc=$?
    code=$(sed -n 's/^ *HTTP\/[0-9.]* \([0-9]*\).*/\1/p' "$T/h" | tail -n1)
    if [ -z "$code" ]; then
      echo "RESULT wget $kind error wget exit $rc: $(tr '\n' ' ' <"$T/h" | head -c 300)"
      continue
    fi
    blocked=$(tr -d '\r' <"$T/h" | sed -n 's/^ *[Xx]-[Ee]gress-[Bb]locked: *//p' | head -n1)
    reason=$(sed -n 's/.*"reason": *"\([^"]*\)".*/\1/p' "$T/b" 2>/dev/null)
    echo "RESULT wget $kind $code ${blocked:--} ${reason:--} 1.1"
  done
  finish wget 0
}

git_client() {  # git shows a refused fetch as "The requested URL returned error: 403", no body
  for kind in allow block host; do
    dest="$T/clone-$kind"
    if git -c http.extraHeader="$AUTH" clone -q "$(url $kind git)/repo.git" "$dest" \
      >"$T/git.err" 2>&1; then
      if [ -f "$dest/README" ]; then code=200; else code=missing-files; fi
      echo "RESULT git $kind $code - - -"
    else
      msg=$(tr '\n' ' ' <"$T/git.err" | head -c 300)
      code=$(echo "$msg" | sed -n 's/.*returned error: \([0-9]*\).*/\1/p')
      if [ -n "$code" ]; then echo "RESULT git $kind $code - - - $msg"; else echo "RESULT git $kind error $msg"; fi
    fi
  done
  finish git 0
}

status_of() {  # CLIENT KIND FILE SED-SCRIPT: the status a refused command printed, else its error
  msg=$(tr '\n' ' ' <"$3" | head -c 400)
  code=$(sed -n "$4" "$3" | head -n1)
  if [ -n "$code" ]; then echo "RESULT $1 $2 $code - - - $msg"; else echo "RESULT $1 $2 error $msg"; fi
}

package_client() {  # NAME FETCH INSTALLED-FILE STATUS-SED: FETCH URL DEST installs from a registry
  name=$1
  for kind in allow block host; do
    dest="$T/$name-$kind"
    mkdir -p "$dest"
    if "$2" "$(url $kind "$name")" "$dest" >"$T/$name.err" 2>&1; then
      if [ -f "$dest/$3" ]; then code=200; else code=missing-files; fi
      echo "RESULT $name $kind $code - - -"
    else
      status_of "$name" $kind "$T/$name.err" "$4"
    fi
  done
  finish "$name" 0
}

pip_fetch() {  # pip download from a PEP 503 index; pip shows a refused index page only with -vv
  env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_NO_INDEX PIP_CONFIG_FILE=/dev/null \
    "$MATRIX_PYTHON" -m pip download -vv --no-deps --no-cache-dir \
    --disable-pip-version-check --retries 0 --timeout 20 -d "$2" --index-url "$1/simple/" egress-probe
}

npm_fetch() {  # npm install from a registry; npm shows a refusal as "code E403", no body
  npm install --prefix "$2" --registry "$1/npm/" --cache "$T/npm-cache" \
    --no-audit --no-fund --no-update-notifier --fetch-retries 0 egress-probe
}

curl_client curl-h1 --http1.1
curl_client curl-h2 --http2
if command -v wget >/dev/null; then wget_client; fi
if command -v git >/dev/null; then GIT_CONFIG_NOSYSTEM=1 git_client; fi
"$MATRIX_PYTHON" "$MATRIX_DIR/clients.py" 2>"$T/python.err"; finish python $?
package_client pip pip_fetch egress_probe-1.0-py3-none-any.whl \
  's/.*Could not fetch URL .*: \([0-9][0-9][0-9]\) Client Error.*/\1/p'
if command -v npm >/dev/null; then
  package_client npm npm_fetch node_modules/egress-probe/package.json 's/.*code E\([0-9][0-9][0-9]\).*/\1/p'
fi
if command -v node >/dev/null; then node "$MATRIX_DIR/clients.js" 2>"$T/node.err"; finish node $?; fi
if [ -f "$MATRIX_DIR/Matrix.class" ]; then java -cp "$MATRIX_DIR" Matrix 2>"$T/java.err"; finish java $?; fi
rm -rf "$T"
