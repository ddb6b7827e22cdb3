//! The Lua filter (`envoy.filters.http.lua`): a script's request and response passes
//! (headers read, added, replaced, removed and iterated; bodies read and rewritten on
//! both sides; `respond()`; stream info), Contour's script, the route cache cleared by a
//! script's header change, `LuaPerRoute` (`disabled`, a named script, an inline one), a
//! runtime error (the stream goes on, counted in `errors`), the filter's counters, and a
//! script that does not compile (refused by both), and the handle's metadata, dynamic
//! metadata, `filterContext()`, base64 and signature methods with their argument errors.
//! Each case runs through Courier and,
//! when `envoy` is on PATH, through Envoy 1.40; the two must agree, and agree with the
//! values written here.

mod http_support;

use std::path::Path;
use std::sync::atomic::Ordering;

use http_support::*;

const FILTER: &str = r#"          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              stat_prefix: main
              default_source_code:
                inline_string: |
                  function envoy_on_request(h)
                    local hd = h:headers()
                    local p = hd:get(":path")
                    if p == "/respond" then
                      h:respond({[":status"] = "403", ["x-t-lua"] = "denied"}, "nope")
                      hd:add("x-t-after", "never")
                    elseif p == "/respond-empty" then
                      h:respond({[":status"] = "204", ["x-t-lua"] = {"a", "b"}})
                    elseif p == "/respond-bad" then
                      h:respond({[":status"] = "100"}, "x")
                    elseif p == "/err" then
                      hd:add("x-t-before-error", "1")
                      local x = nil
                      x.y = 1
                    elseif p == "/hdrs" then
                      hd:add("x-t-added", "1")
                      hd:replace("x-t-rep", "new")
                      hd:replace("x-t-fresh", "made")
                      hd:remove("x-t-gone")
                      hd:add("x-t-count", tostring(hd:getNumValues("x-t-multi")))
                      hd:add("x-t-at1", hd:getAtIndex("x-t-multi", 1) or "nil")
                      hd:add("x-t-at5", hd:getAtIndex("x-t-multi", 5) or "nil")
                      hd:add("x-t-joined", hd:get("x-t-multi"))
                      hd:add("x-t-none", tostring(hd:get("x-t-absent") == nil))
                      hd:add("x-t-method", hd:get(":method"))
                      local seen = {}
                      for k, v in pairs(hd) do
                        if string.sub(k, 1, 4) == "x-t-" or string.sub(k, 1, 1) == ":" then
                          seen[#seen + 1] = k .. "=" .. v
                        end
                      end
                      table.sort(seen)
                      hd:add("x-t-seen", table.concat(seen, ";"))
                    elseif p == "/body/echo" then
                      local b = h:body()
                      local after = h:headers()
                      after:add("x-t-len", tostring(b:length()))
                      after:add("x-t-first", b:getBytes(0, 3))
                      b:setBytes("rewritten:" .. b:getBytes(0, b:length()))
                    elseif p == "/body/read/echo" then
                      hd:add("x-t-body", h:body():getBytes(0, 4))
                    elseif p == "/nobody" then
                      hd:add("x-t-body", tostring(h:body() == nil))
                      hd:add("x-t-always", tostring(h:body(true):length()))
                    elseif p == "/stale/echo" then
                      local si = h:streamInfo()
                      h:body()
                      h:headers():add("x-t-proto", si:protocol())
                    elseif p == "/bad-range/echo" then
                      h:body():getBytes(2, 100)
                    elseif p == "/si" then
                      local si = h:streamInfo()
                      local ip = function(a) return (string.gsub(a, ":%d+$", "")) end
                      h:respond({[":status"] = "200", ["x-t-proto"] = si:protocol(),
                        ["x-t-local"] = ip(si:downstreamLocalAddress()),
                        ["x-t-direct"] = ip(si:downstreamDirectRemoteAddress()),
                        ["x-t-remote"] = ip(si:downstreamRemoteAddress()),
                        ["x-t-sni"] = "[" .. si:requestedServerName() .. "]",
                        ["x-t-ssl"] = tostring(h:connection():ssl()),
                        ["x-t-b64"] = h:base64Escape("hello?>"),
                        ["x-t-ts"] = tostring(h:timestamp() > 1700000000000)}, "si")
                    elseif p == "/reroute" then
                      hd:replace(":path", "/rerouted")
                    elseif p == "/method" then
                      hd:replace(":method", "PUT")
                    elseif p == "/yield" then
                      coroutine.yield()
                    elseif p == "/log" then
                      h:logWarn("a warning")
                      h:logInfo("some info")
                    end
                  end
                  function envoy_on_response(h)
                    local hd = h:headers()
                    hd:add("x-t-resp", hd:get(":status"))
                    if hd:get(":status") == "201" then
                      local b = h:body()
                      b:setBytes(string.upper(b:getBytes(0, b:length())))
                    elseif hd:get(":status") == "202" then
                      hd:remove("x-upstream")
                      error("response boom")
                    elseif hd:get(":status") == "206" then
                      hd:replace(":status", "299")
                    end
                  end
              source_codes:
                named.lua:
                  inline_string: |
                    function envoy_on_request(h)
                      h:headers():add("x-t-script", "named")
                    end
"#;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    disabled: true
              - match: { prefix: "/named" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: named.lua
              - match: { prefix: "/unknown-name" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: nowhere.lua
              - match: { prefix: "/inline" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
                        function envoy_on_request(h)
                          h:headers():add("x-t-script", "inline")
                        end
                        function envoy_on_response(h)
                          h:headers():add("x-t-inline-resp", "1")
                        end
              - match: { prefix: "/rerouted" }
                direct_response: { status: 200, body: { inline_string: "rerouted" } }
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "direct" } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn boot(_dir: &Path, a: &Upstream) -> String {
    with_filters(&bootstrap(ROUTES, "", &cluster("a", &[a.addr], "")), FILTER)
}

/// A request with a sized body (`extra`: header lines).
fn req(method: &str, path: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: example.com\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The `x-t-` fields of a list, sorted, as `name=value`.
fn test_fields(fields: &[(String, String)]) -> String {
    let mut v: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k.starts_with("x-t-") || k == "x-upstream")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.sort();
    v.join(" ")
}

/// Each request on a fresh connection as `label: status [fields] body | upstream: method
/// path [fields] body` (the upstream's part when it got the request), then the counters.
fn run(proxy: &Courier, _dir: &Path, a: &Upstream, cases: &[(&str, String)]) -> Vec<String> {
    let mut out: Vec<String> = cases
        .iter()
        .map(|(label, raw)| {
            let before = a.requests.load(Ordering::SeqCst);
            let mut c = Client::connect(proxy.listener);
            c.send_raw(raw.as_bytes());
            let r = c.read().expect("a response");
            let reached = a.requests.load(Ordering::SeqCst) - before;
            let seen = match (reached, a.last()) {
                (1, Some(s)) => format!(
                    " | upstream: {} {} host={:?} cl={:?} [{}] {:?}",
                    s.method,
                    s.path,
                    s.header("host"),
                    s.header("content-length"),
                    test_fields(&s.headers),
                    String::from_utf8_lossy(&s.body)
                ),
                _ => String::new(),
            };
            format!(
                "{label}: {} [{}] cl={:?} {:?}{seen}",
                r.status,
                test_fields(&r.headers),
                r.header("content-length"),
                r.body_str()
            )
        })
        .collect();
    for c in ["errors", "executions"] {
        out.push(format!(
            "{c}={}",
            proxy.stat(&format!("http.ingress.lua.main.{c}"))
        ));
    }
    out
}

#[test]
fn lua_matches_envoy() {
    let cases: Vec<(&str, String)> = vec![
        ("plain", req("GET", "/plain", "", "")),
        (
            "headers",
            req(
                "GET",
                "/hdrs",
                "x-t-rep: old\r\nx-t-rep: older\r\nx-t-gone: 1\r\nx-t-multi: m0\r\nx-t-multi: m1\r\n",
                "",
            ),
        ),
        ("respond", req("GET", "/respond", "", "")),
        ("respond, no body", req("GET", "/respond-empty", "", "")),
        ("respond, bad status", req("GET", "/respond-bad", "", "")),
        ("runtime error", req("GET", "/err", "", "")),
        ("body rewrite", req("POST", "/body/echo", "", "hello body")),
        (
            "body read, headers got before",
            req("POST", "/body/read/echo", "", "abcdefg"),
        ),
        ("stale stream info", req("POST", "/stale/echo", "", "xyz")),
        ("no body", req("GET", "/nobody", "", "")),
        ("body range error", req("POST", "/bad-range/echo", "", "abc")),
        ("stream info", req("GET", "/si", "", "")),
        ("reroute", req("GET", "/reroute", "", "")),
        ("method", req("GET", "/method", "", "")),
        ("unexpected yield", req("GET", "/yield", "", "")),
        ("logs", req("GET", "/log", "", "")),
        ("response body", req("GET", "/status/201", "", "")),
        ("response error", req("GET", "/status/202", "", "")),
        ("response status", req("GET", "/status/206", "", "")),
        ("direct response", req("GET", "/direct", "", "")),
        ("disabled", req("GET", "/off/x", "", "")),
        ("disabled, body", req("POST", "/off/status/201", "", "abc")),
        ("named", req("GET", "/named/x", "", "")),
        ("unknown name", req("GET", "/unknown-name/x", "", "")),
        ("inline", req("GET", "/inline/x", "", "")),
        ("no route host", req("GET", "/status/203", "", "")),
    ];
    let got = courier_and_envoy_agree(boot, |proxy, dir, a| run(proxy, dir, a, &cases));
    let n = cases.len();
    let statuses: Vec<&str> = got[..n]
        .iter()
        .map(|l| l.split(": ").nth(1).and_then(|r| r.get(..3)).unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        [
            "200", "200", "403", "204", "200", "200", "200", "200", "200", "200", "200", "200",
            "200", "200", "200", "200", "201", "202", "299", "200", "200", "201", "200", "200",
            "200", "203"
        ]
    );
    let line = |label: &str| {
        got.iter()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        line("headers").contains("x-t-seen=:authority=example.com;:method=GET;:path=/hdrs;:scheme=http;x-t-added=1;x-t-at1=m1;x-t-at5=nil;x-t-count=2;x-t-fresh=made;x-t-joined=m0,m1;x-t-method=GET;x-t-multi=m0;x-t-multi=m1;x-t-none=true;x-t-rep=new]"),
        "{}",
        line("headers")
    );
    assert_eq!(
        line("respond"),
        "respond: 403 [x-t-lua=denied x-t-resp=403] cl=Some(\"4\") \"nope\""
    );
    // A runtime error leaves the request as the script had changed it, and it goes on.
    assert!(line("runtime error").ends_with("[x-t-before-error=1] \"\""));
    assert!(line("body rewrite")
        .ends_with("cl=Some(\"20\") [x-t-first=hel x-t-len=10] \"rewritten:hello body\""));
    // Headers got before the script waited for the body are dead after: an error.
    assert!(line("body read, headers got before").ends_with("[] \"abcdefg\""));
    assert!(line("no body").contains("[x-t-always=0 x-t-body=true]"));
    assert!(line("reroute").ends_with("\"rerouted\""));
    assert!(line("response body").contains("\"A GET /STATUS/201\""));
    assert!(line("response error").starts_with("response error: 202 [x-t-resp=202]"));
    assert!(line("disabled").starts_with("disabled: 200 [x-upstream=a]"));
    assert!(line("named").contains("[x-t-script=named]"));
    assert!(line("unknown name").ends_with("[] \"\""));
    assert!(line("inline").contains("[x-t-inline-resp=1 x-upstream=a]"));
    assert!(line("stream info").contains(
        "x-t-direct=127.0.0.1 x-t-local=127.0.0.1 x-t-proto=HTTP/1.1 x-t-remote=127.0.0.1"
    ));
    assert_eq!(got[n..], ["errors=7", "executions=45"]);
}

#[test]
fn contours_script_strips_the_listeners_port() {
    let script = r#"          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  -- Strip the port from a Host that carries the listener's port.
                  function envoy_on_request(request_handle)
                    local host = request_handle:headers():get(":authority")
                    if host ~= nil and string.find(host, ":8080$") then
                      request_handle:headers():replace(":authority", string.gsub(host, ":8080$", ""))
                    end
                  end
"#;
    let routes = r#"            name: local
            virtual_hosts:
            - name: app
              domains: [app.example.com]
              routes:
              - match: { prefix: "/" }
                route: { cluster: a }
            - name: other
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 404, body: { inline_string: "other" } }
"#;
    let boot = |_: &Path, a: &Upstream| {
        with_filters(&bootstrap(routes, "", &cluster("a", &[a.addr], "")), script)
    };
    let run = |proxy: &Courier, _: &Path, a: &Upstream| {
        [
            "app.example.com:8080",
            "app.example.com",
            "app.example.com:9090",
        ]
        .iter()
        .map(|host| {
            let before = a.requests.load(Ordering::SeqCst);
            let mut c = Client::connect(proxy.listener);
            let r = c.get(host, "/x", &[]);
            let reached = a.requests.load(Ordering::SeqCst) - before;
            let seen = a.last().filter(|_| reached == 1);
            format!(
                "{host}: {} {:?} upstream host={:?}",
                r.status,
                r.body_str(),
                seen.as_ref().and_then(|s| s.header("host"))
            )
        })
        .collect::<Vec<_>>()
    };
    let got = courier_and_envoy_agree(boot, run);
    assert_eq!(
        got,
        [
            "app.example.com:8080: 200 \"a GET /x\" upstream host=Some(\"app.example.com\")",
            "app.example.com: 200 \"a GET /x\" upstream host=Some(\"app.example.com\")",
            "app.example.com:9090: 404 \"other\" upstream host=None",
        ]
    );
}

#[test]
fn scripts_that_do_not_load_are_refused_as_envoy_refuses_them() {
    let a = Upstream::start("a");
    let base = boot(Path::new("/"), &a);
    for (from, to, want) in [
        (
            "function envoy_on_request(h)\n",
            "function envoy_on_request(h\n",
            "')' expected",
        ),
        (
            "                  function envoy_on_response(h)\n",
            "                  error(\"at load\")\n                  function envoy_on_response(h)\n",
            "at load",
        ),
        (
            "                      h:headers():add(\"x-t-script\", \"named\")\n",
            "                      h:headers():add(\"x-t-script\", \"named\"\n",
            "')' expected",
        ),
        (
            "disabled: true",
            "disabled: false",
            "disabled",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let cfg = base.replacen(from, to, 1);
        let (code, stderr) = validate(&cfg);
        assert_eq!(code, Some(1), "{to}: {stderr}");
        assert!(stderr.contains(want), "courier: want {want:?} in {stderr}");
        if let Some((code, out)) = envoy_validate(&cfg) {
            assert_ne!(code, Some(0), "{to}: envoy took it: {out}");
            assert!(out.contains(want), "envoy: want {want:?} in {out}");
        }
    }
    let (code, stderr) = validate(&base);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn fields_courier_does_not_act_on_are_refused_by_path() {
    let a = Upstream::start("a");
    let base = boot(Path::new("/"), &a);
    assert_refused_by_path(
        &base,
        &[
            (
                "stat_prefix: main\n",
                "stat_prefix: main\n              clear_route_cache: false\n",
                "clear_route_cache",
            ),
            (
                "stat_prefix: main\n",
                "stat_prefix: main\n              package_paths: [\"/x/?.lua\"]\n",
                "package_paths",
            ),
        ],
    );
}

const CALLS: &str = r##"          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              stat_prefix: main
              default_source_code:
                inline_string: |
                  local function try(h, ...)
                    local ok, e = pcall(h.httpCall, h, ...)
                    h:respond({[":status"] = "200", ["x-t-ok"] = tostring(ok)}, "[" .. tostring(e) .. "]")
                  end
                  local svc = {[":method"] = "GET", [":path"] = "/svc", [":authority"] = "svc"}
                  function envoy_on_request(h)
                    local p = h:headers():get(":path")
                    if p == "/call" then
                      local hd, body = h:httpCall("b", {[":method"] = "POST", [":path"] = "/called",
                        [":authority"] = "svc", ["x-t-in"] = {"1", "2"}}, "ping", 2000)
                      h:respond({[":status"] = "200", ["x-t-status"] = hd[":status"],
                        ["x-t-up"] = hd["x-upstream"], ["x-t-cl"] = hd["content-length"]}, body)
                    elseif p == "/call-pass" then
                      local before = h:headers()
                      local hd, body = h:httpCall("b", {[":method"] = "GET", [":path"] = "/status/201",
                        [":authority"] = "svc"}, nil, {timeout_ms = 2000})
                      h:headers():add("x-t-called", hd[":status"] .. " " .. tostring(body))
                      local ok, e = pcall(function() before:add("x-t-stale", "1") end)
                      h:respond({[":status"] = "200", ["x-t-called"] = hd[":status"] .. " " .. tostring(body),
                        ["x-t-ok"] = tostring(ok)})
                    elseif p == "/unknown" then
                      try(h, "nowhere", svc, nil, 100)
                    elseif p == "/unknown-and-no-pseudo" then
                      try(h, "nowhere", {[":path"] = "/"}, nil, 100)
                    elseif p == "/no-pseudo" then
                      try(h, "b", {[":method"] = "GET", [":path"] = "/"}, nil, 100)
                    elseif p == "/negative" then
                      try(h, "b", svc, nil, -1)
                    elseif p == "/bad-flag" then
                      try(h, "b", svc, nil, 100, "yes")
                    elseif p == "/bad-timeout" then
                      try(h, "b", svc, nil, "soon")
                    elseif p == "/no-headers" then
                      try(h, "b", nil, nil, 100)
                    elseif p == "/bad-option" then
                      try(h, "b", svc, nil, {bogus = 1})
                    elseif p == "/timeout" then
                      local hd, body = h:httpCall("silent", svc, nil, 300)
                      h:respond({[":status"] = "200", ["x-t-status"] = hd[":status"],
                        ["x-t-ct"] = hd["content-type"] or "none",
                        ["x-t-cl"] = hd["content-length"] or "none"}, body)
                    elseif p == "/refused" then
                      local hd, body = h:httpCall("refused", svc, nil, {timeout_ms = 2000})
                      h:respond({[":status"] = "200", ["x-t-status"] = hd[":status"]}, body)
                    elseif p == "/async" then
                      local n = select("#", h:httpCall("b", {[":method"] = "POST", [":path"] = "/async",
                        [":authority"] = "svc"}, "fire", {asynchronous = true, timeout_ms = 2000}))
                      h:respond({[":status"] = "200", ["x-t-n"] = tostring(n)})
                    elseif p == "/async-flag" then
                      local n = select("#", h:httpCall("b", {[":method"] = "POST", [":path"] = "/async-flag",
                        [":authority"] = "svc"}, "fire", 2000, true))
                      h:respond({[":status"] = "200", ["x-t-n"] = tostring(n)})
                    elseif p == "/dup" then
                      local one = h:httpCall("dup", svc, nil, 2000)
                      local all = h:httpCall("dup", svc, nil, {timeout_ms = 2000,
                        return_duplicate_headers = true})
                      local d = all["x-dup"]
                      h:respond({[":status"] = "200", ["x-t-one"] = one["x-dup"],
                        ["x-t-all"] = type(d) == "table" and table.concat(d, ",") or "single"})
                    elseif p == "/chunks/echo" then
                      h:headers():add("x-t-before", "1")
                      for c in h:bodyChunks() do
                        c:setBytes(string.upper(c:getBytes(0, c:length())))
                      end
                      late = {}
                      late[1] = tostring(pcall(function() h:headers():add("x-t-late", "1") end))
                      late[2] = tostring(pcall(h.body, h))
                      late[3] = tostring(pcall(h.respond, h, {[":status"] = "200"}))
                      late[4] = tostring(h:headers():get(":path"))
                    elseif p == "/chunks-twice/echo" then
                      h:body()
                      late = {tostring(pcall(h.bodyChunks, h))}
                    elseif p == "/uncaught" then
                      h:headers():add("x-t-before", "1")
                      h:httpCall("nowhere", svc, nil, 100)
                      h:headers():add("x-t-after", "1")
                    end
                  end
                  function envoy_on_response(h)
                    if late then
                      h:headers():add("x-t-late", table.concat(late, " "))
                      late = nil
                    end
                    if h:headers():get(":status") == "203" then
                      h:headers():add("x-t-chunked", "1")
                      for c in h:bodyChunks() do
                        c:setBytes(string.upper(c:getBytes(0, c:length())))
                      end
                    end
                    if h:headers():get(":status") == "202" then
                      local hd, body = h:httpCall("b", {[":method"] = "GET", [":path"] = "/from-response",
                        [":authority"] = "svc"}, nil, 2000)
                      h:headers():add("x-t-resp-call", hd[":status"] .. " " .. body)
                    end
                  end
"##;

#[test]
fn http_calls_and_body_chunks_match_envoy() {
    let b = Upstream::start("b");
    let silent = silent_upstream();
    let refused = refusing_addr();
    let dup = http_service(|_| Answer {
        status: 200,
        headers: vec![("x-dup".into(), "1".into()), ("x-dup".into(), "2".into())],
        body: bytes::Bytes::new(),
    });
    let boot = |_: &Path, a: &Upstream| {
        let clusters = format!(
            "{}{}{}{}{}",
            cluster("a", &[a.addr], ""),
            cluster("b", &[b.addr], ""),
            cluster("silent", &[silent], ""),
            cluster("refused", &[refused], ""),
            cluster("dup", &[dup], "")
        );
        with_filters(&bootstrap(&all_to("a"), "", &clusters), CALLS)
    };
    let cases: Vec<(&str, String)> = [
        ("call", "/call"),
        ("call, request goes on", "/call-pass"),
        ("unknown cluster", "/unknown"),
        (
            "unknown cluster and no pseudo-headers",
            "/unknown-and-no-pseudo",
        ),
        ("no pseudo-headers", "/no-pseudo"),
        ("negative timeout", "/negative"),
        ("bad asynchronous flag", "/bad-flag"),
        ("bad option", "/bad-option"),
        ("bad timeout", "/bad-timeout"),
        ("no headers", "/no-headers"),
        ("timeout", "/timeout"),
        ("refused", "/refused"),
        ("uncaught", "/uncaught"),
        ("from the response", "/status/202"),
        ("duplicate fields", "/dup"),
    ]
    .into_iter()
    .map(|(label, path)| (label, req("GET", path, "", "")))
    .chain([
        ("chunks", req("POST", "/chunks/echo", "", "hello chunks")),
        (
            "chunks after body()",
            req("POST", "/chunks-twice/echo", "", "abc"),
        ),
        ("response chunks", req("GET", "/status/203", "", "")),
    ])
    .collect();
    let run_all = |proxy: &Courier, dir: &Path, a: &Upstream| {
        let before = b.seen.lock().expect("seen").len();
        let mut out = run(proxy, dir, a, &cases);
        let called = b.seen.lock().expect("seen")[before..].to_vec();
        out.extend(called.iter().map(|s| {
            format!(
                "b got: {} {} host={:?} cl={:?} [{}] {:?}",
                s.method,
                s.path,
                s.header("host"),
                s.header("content-length"),
                test_fields(&s.headers),
                String::from_utf8_lossy(&s.body)
            )
        }));
        // Calls not waited for: answered at once, and sent.
        for path in ["/async", "/async-flag"] {
            let mut c = Client::connect(proxy.listener);
            c.send_raw(req("GET", path, "", "").as_bytes());
            let r = c.read().expect("a response");
            out.push(format!(
                "{path}: {} [{}]",
                r.status,
                test_fields(&r.headers)
            ));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let sent = loop {
                let seen = b
                    .seen
                    .lock()
                    .expect("seen")
                    .iter()
                    .rev()
                    .find(|s| s.path == path)
                    .cloned();
                if seen.is_some() || std::time::Instant::now() > deadline {
                    break seen;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            out.push(format!(
                "{path} sent: {:?}",
                sent.map(|s| (s.method, String::from_utf8_lossy(&s.body).into_owned()))
            ));
            b.seen.lock().expect("seen").retain(|s| s.path != path);
        }
        out
    };
    let got = courier_and_envoy_agree(boot, run_all);
    let line = |label: &str| {
        got.iter()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .cloned()
            .unwrap_or_default()
    };
    // The answer's headers table and body; the call as the script built it, with its
    // body's length.
    assert_eq!(
        line("call"),
        "call: 200 [x-t-cl=14 x-t-status=200 x-t-up=b] cl=Some(\"14\") \"b POST /called\""
    );
    assert!(got.contains(
        &"b got: POST /called host=Some(\"svc\") cl=Some(\"4\") [x-t-in=1 x-t-in=2] \"ping\""
            .to_string()
    ));
    // What the script got before the call is dead after it.
    assert!(
        line("call, request goes on").contains("[x-t-called=201 b GET /status/201 x-t-ok=false]")
    );
    for (label, message) in [
        (
            "unknown cluster",
            "http call cluster invalid. Must be configured",
        ),
        (
            "unknown cluster and no pseudo-headers",
            "http call cluster invalid. Must be configured",
        ),
        (
            "no pseudo-headers",
            "http call headers must include ':path', ':method', and ':authority'",
        ),
        ("negative timeout", "http call timeout must be >= 0"),
        (
            "bad asynchronous flag",
            "http call asynchronous flag must be 'true', 'false', or empty",
        ),
        (
            "bad option",
            "\\\"bogus\\\" is not valid key for httpCall() options",
        ),
        (
            "bad timeout",
            "bad argument #5 to '?' (number expected, got string)",
        ),
    ] {
        assert!(
            line(label).ends_with(&format!(
                "[x-t-ok=false] cl=Some(\"{}\") \"[{message}]\"",
                message.replace('\\', "").len() + 2
            )),
            "{}",
            line(label)
        );
    }
    // No answer in time: the async client's router's `504`.
    assert!(line("timeout").contains("[x-t-cl=24 x-t-ct=text/plain x-t-status=504]"));
    assert!(line("refused").ends_with("[x-t-status=503] cl=Some(\"98\") \"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure\""), "{}", line("refused"));
    // An error the script does not catch: counted, and the request goes on.
    assert!(line("uncaught").ends_with("[x-t-before=1] \"\""));
    assert!(line("from the response").contains("x-t-resp-call=200 b GET /from-response"));
    assert!(got.contains(&"errors=1".to_string()));
    // A field given twice: its last value, or both when the script asks.
    assert!(
        line("duplicate fields").contains("[x-t-all=1,2 x-t-one=2]"),
        "{}",
        line("duplicate fields")
    );
    // The head goes on before the body, which streams through the script's loop as the
    // script changes it; after it, the head can no longer change, nor the request be
    // answered.
    assert!(line("chunks").ends_with("[x-t-late=false false false /chunks/echo x-upstream=a] cl=Some(\"12\") \"HELLO CHUNKS\" | upstream: POST /chunks/echo host=Some(\"example.com\") cl=Some(\"12\") [x-t-before=1] \"HELLO CHUNKS\""), "{}", line("chunks"));
    assert!(line("chunks after body()").contains("[x-t-late=false x-upstream=a]"));
    assert!(
        line("response chunks")
            .contains("[x-t-chunked=1 x-upstream=a] cl=Some(\"17\") \"A GET /STATUS/203\""),
        "{}",
        line("response chunks")
    );
    for path in ["/async", "/async-flag"] {
        assert!(got.contains(&format!("{path}: 200 [x-t-n=0]")));
        assert!(got.contains(&format!("{path} sent: Some((\"POST\", \"fire\"))")));
    }
}

/// An RSA (1024-bit) key's `SubjectPublicKeyInfo` and its PKCS #1 v1.5 SHA-256 signature of
/// `hello`; a P-256 key's and its ECDSA signature of the same (made with openssl).
const KEYS: &str = r#"local function hex(s) return (s:gsub('..', function(c) return string.char(tonumber(c, 16)) end)) end
                  local PUB = hex("30819f300d06092a864886f70d010101050003818d0030818902818100bb3b4c8d4e01adfc151c3aa30c0f920302453ca34825da07f9314047e452aef15cbffed6d8850c40f56d59e457c631dd21ef3288d6c0070ba5edbbd19c0ef5a0466a58d24520240eedd581c5e068f28f8761b6db0d937c61eccb38b0d6c325dd0b977c021e2c5ee3e7f006a755ff194cebc4429ba60c8ed3399c9556ee0c695d0203010001")
                  local SIG = hex("5cb32cdace2ffe5b10c3ba331f3461fd155f3e2eb1a705607431d04bf067712051e00667ab878f13d580d169868b54fab51e156dc7b0cb181bbdb04c6a63ca3c629cb1b275da9a2ddd6a46d71f2751e47a728869a4928a5c6d2fcda28bace31a7cf77ba676a1fe730a87cb4170e0e23e767de8ddea92d29a74481b281da26506")
                  local ECPUB = hex("3059301306072a8648ce3d020106082a8648ce3d03010703420004f2cd0e4ed56bd35f5622b3d02f8486c8324ccf9ec2cdaa37715bf26bd7955cc068f049f148174dfff2c55e7ec7e89e0d670f79b4e597d238200d17bd7fae64bd")
                  local ECSIG = hex("304502206a0e32b9a22fc79d0659608b07781a53593cc06140247256fc0092b8196cf05f022100cef3f6023fd8a895a8d204c36b297f7b143b0780eeb364389d67bd0590c55778")
"#;

/// Two Lua filters: the first (`my.lua`, with a `filter_context`) exercises the handle's
/// metadata, stream info, encoding and signature API, answering with what it saw; the
/// second reads the dynamic metadata the first set.
const API: &str = r##"          - name: my.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              stat_prefix: main
              filter_context: { fk: fv, n: 3, nested: { l: [a, 1, true] } }
              default_source_code:
                inline_string: |
                  KEYS
                  local function show(t)
                    if type(t) ~= "table" then return type(t) .. ":" .. tostring(t) end
                    local ks = {}
                    for k, v in pairs(t) do ks[#ks + 1] = tostring(k) .. "=" .. show(v) end
                    table.sort(ks)
                    return "{" .. table.concat(ks, ",") .. "}"
                  end
                  local function sorted(m)
                    local ks = {}
                    for k, v in pairs(m) do ks[#ks + 1] = k .. "=" .. show(v) end
                    table.sort(ks)
                    return table.concat(ks, ";")
                  end
                  function envoy_on_request(h)
                    local p = h:headers():get(":path")
                    local out = {}
                    local function try(name, f, ...)
                      local r = { pcall(f, ...) }
                      out[#out + 1] = name .. " => " .. show(r[1]) .. " " .. show(r[2]) .. " " .. show(r[3])
                    end
                    if p == "/b64" then
                      try("escape", h.base64Escape, h, "hello?>\0\255")
                      try("escape number", h.base64Escape, h, 12)
                      try("escape table", h.base64Escape, h, {})
                      try("escape none", h.base64Escape, h)
                      for _, x in ipairs({ "aGVsbG8/Pg==", "aGVsbG8/Pg", "aGVs bG8=\n", "aGVsbG9=", "ab==",
                          "", "!!!", "aGVsbG8_Pg==", "aGVsbG8==", "aGVsbA=x", "a", "ab=", "====" }) do
                        try("decode " .. string.format("%q", x), h.base64Decode, h, x)
                      end
                      try("decode number", h.base64Decode, h, 1234)
                      try("decode table", h.base64Decode, h, {})
                    elseif p == "/b64-uncaught" then
                      h:headers():add("x-t-before", "1")
                      h:base64Decode({})
                    elseif string.sub(p, 1, 3) == "/md" then
                      local md = h:metadata()
                      try("get foo", md.get, md, "foo")
                      try("get nested", md.get, md, "nested")
                      try("get missing", md.get, md, "missing")
                      try("get table", md.get, md, {})
                      out[#out + 1] = "pairs " .. sorted(md)
                      out[#out + 1] = "route " .. sorted(h:route():metadata())
                      out[#out + 1] = "virtual host " .. sorted(h:virtualHost():metadata())
                    elseif string.sub(p, 1, 3) == "/fc" then
                      local fc = h:filterContext()
                      try("fk", fc.get, fc, "fk")
                      out[#out + 1] = "pairs " .. sorted(fc)
                    elseif p == "/dm" then
                      local dm = h:streamInfo():dynamicMetadata()
                      try("get none", dm.get, dm, "ns")
                      try("set", dm.set, dm, "ns", "k", "v")
                      try("set table", dm.set, dm, "ns", "t", { a = 1, b = { 1, 2, "x" }, c = true, e = {} })
                      try("set nil", dm.set, dm, "ns", "n", nil)
                      try("set numbers", dm.set, dm, 5, 6, 7)
                      try("set again", dm.set, dm, "ns", "k", "w")
                      try("set function", dm.set, dm, "ns", "f", function() end)
                      try("set number key", dm.set, dm, "ns", "nk", { [1.5] = 1 })
                      try("set boolean key", dm.set, dm, "ns", "bk", { [true] = 1 })
                      try("set table namespace", dm.set, dm, {}, "k", 1)
                      try("get", dm.get, dm, "ns")
                      try("get number", dm.get, dm, 5)
                      out[#out + 1] = "pairs " .. sorted(dm)
                      dm:set("ns", "to_next", "from my.lua")
                      h:headers():add("x-t-out", table.concat(out, " | "))
                      return
                    elseif p == "/dm-uncaught" then
                      local dm = h:streamInfo():dynamicMetadata()
                      dm:set("ns", "to_next", "before")
                      dm:set("ns", "f", function() end)
                      dm:set("ns", "to_next", "after")
                      return
                    elseif p == "/si" then
                      local si = h:streamInfo()
                      h:headers():add("x-t-route", si:routeName())
                      h:headers():add("x-t-vc", "[" .. si:virtualClusterName() .. "]")
                      h:headers():add("x-t-local", (string.gsub(si:downstreamDirectLocalAddress(), ":%d+$", "")))
                      h:headers():add("x-t-ssl", tostring(si:downstreamSslConnection()))
                      return
                    elseif p == "/verify" then
                      local key = h:importPublicKey(PUB, #PUB):get()
                      try("key", function() return #key end)
                      try("good", h.verifySignature, h, "sha256", key, SIG, #SIG, "hello", 5)
                      try("upper case", h.verifySignature, h, "SHA256", key, SIG, #SIG, "hello", 5)
                      try("other text", h.verifySignature, h, "sha256", key, SIG, #SIG, "hellx", 5)
                      try("short text", h.verifySignature, h, "sha256", key, SIG, #SIG, "hello", 4)
                      try("other hash", h.verifySignature, h, "sha1", key, SIG, #SIG, "hello", 5)
                      try("unknown hash", h.verifySignature, h, "md5", key, SIG, #SIG, "hello", 5)
                      try("bad signature", h.verifySignature, h, "sha256", key, "xyz", 3, "hello", 5)
                      try("unknown key", h.verifySignature, h, "sha256", "nokey", SIG, #SIG, "hello", 5)
                      try("nil key", h.verifySignature, h, "sha256", nil, SIG, #SIG, "hello", 5)
                      try("table signature", h.verifySignature, h, "sha256", key, {}, 3, "hello", 5)
                      try("string length", h.verifySignature, h, "sha256", key, SIG, "x", "hello", 5)
                      try("second import", function() return h:importPublicKey(ECPUB, #ECPUB):get() == key end)
                    elseif p == "/verify-ec" then
                      local key = h:importPublicKey(ECPUB, #ECPUB):get()
                      try("good", h.verifySignature, h, "sha256", key, ECSIG, #ECSIG, "hello", 5)
                      try("other text", h.verifySignature, h, "sha256", key, ECSIG, #ECSIG, "hellx", 5)
                      try("other hash", h.verifySignature, h, "sha384", key, ECSIG, #ECSIG, "hello", 5)
                    elseif p == "/import-bad" then
                      try("junk", function() return h:importPublicKey("junk", 4):get() end)
                      try("then good", function() return h:importPublicKey(PUB, #PUB):get() end)
                      try("verify", h.verifySignature, h, "sha256", "junk", SIG, #SIG, "hello", 5)
                    elseif p == "/import-args" then
                      try("table", h.importPublicKey, h, {}, 3)
                      try("no length", h.importPublicKey, h, PUB)
                      try("short length", function() return h:importPublicKey(PUB, 20):get() end)
                    elseif p == "/verify-uncaught" then
                      h:headers():add("x-t-before", "1")
                      h:verifySignature("sha256", "nokey", SIG, #SIG, "hello", 5)
                    elseif p == "/ts" then
                      try("millis", function() return h:timestamp() > 1700000000000 end)
                      try("micros", function() return #h:timestampString(EnvoyTimestampResolution.MICROSECOND) end)
                      try("millis string", function() return #h:timestampString(EnvoyTimestampResolution.MILLISECOND) end)
                      try("bad unit", h.timestamp, h, 5)
                      try("bad string unit", h.timestampString, h, "2")
                      try("table unit", h.timestamp, h, {})
                      try("enum", function() return EnvoyTimestampResolution.MILLISECOND .. "/" .. EnvoyTimestampResolution.MICROSECOND end)
                    else
                      return
                    end
                    h:respond({ [":status"] = "200" }, table.concat(out, "\n"))
                  end
                  function envoy_on_response(h)
                    local dm = h:streamInfo():dynamicMetadata():get("ns")
                    if dm then h:headers():add("x-t-dm-resp", tostring(dm.to_next)) end
                    local si = h:streamInfo()
                    h:headers():add("x-t-resp-route", si:routeName() .. "[" .. si:virtualClusterName() .. "]")
                  end
              source_codes:
                fc.lua:
                  inline_string: |
                    function envoy_on_request(h)
                      local fc = h:filterContext()
                      -- A key it does not hold gives no value at all (not even `nil`).
                      h:headers():add("x-t-fc", tostring(fc:get("fk")) .. " " .. select("#", fc:get("n")))
                    end
          - name: second.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h)
                    local dm = h:streamInfo():dynamicMetadata():get("ns")
                    if dm then h:headers():add("x-t-dm", tostring(dm.to_next) .. " " .. tostring(dm.k)) end
                  end
"##;

const API_ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              metadata: { filter_metadata: { my.lua: { vh: "v" } } }
              virtual_clusters:
              - name: vc1
                headers: [{ name: ":path", string_match: { prefix: "/" } }]
              routes:
              - match: { prefix: "/md-fallback" }
                name: fallback
                metadata:
                  filter_metadata:
                    envoy.filters.http.lua: { foo: general, nested: { a: 1, b: [x, 2, true, null] } }
                route: { cluster: a }
              - match: { prefix: "/md-none" }
                route: { cluster: a }
              - match: { prefix: "/md" }
                name: own
                metadata:
                  filter_metadata:
                    envoy.filters.http.lua: { foo: general }
                    my.lua: { foo: mine, nested: { a: 1, b: [x, 2, true, null] }, list: [1, 2] }
                route: { cluster: a }
              - match: { prefix: "/fc-route" }
                route: { cluster: a }
                typed_per_filter_config:
                  my.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: fc.lua
                    filter_context: { fk: route }
              - match: { prefix: "/" }
                name: catch-all
                route: { cluster: a }
"#;

#[test]
fn metadata_encoding_and_signatures_match_envoy() {
    let filters = API.replace("KEYS\n", &format!("{}\n", KEYS.trim_end()));
    let boot = |_: &Path, a: &Upstream| {
        with_filters(
            &bootstrap(API_ROUTES, "", &cluster("a", &[a.addr], "")),
            &filters,
        )
    };
    let cases: Vec<(&str, String)> = [
        ("base64", "/b64"),
        ("base64, uncaught", "/b64-uncaught"),
        ("metadata", "/md"),
        ("metadata, fallback", "/md-fallback"),
        ("metadata, none", "/md-none"),
        ("filter context", "/fc"),
        ("filter context, route's", "/fc-route"),
        ("dynamic metadata", "/dm"),
        ("dynamic metadata, uncaught", "/dm-uncaught"),
        ("stream info", "/si"),
        ("verify", "/verify"),
        ("verify, EC", "/verify-ec"),
        ("import, bad key", "/import-bad"),
        ("import, bad arguments", "/import-args"),
        ("verify, uncaught", "/verify-uncaught"),
        ("timestamps", "/ts"),
    ]
    .into_iter()
    .map(|(label, path)| (label, req("GET", path, "", "")))
    .collect();
    let got = courier_and_envoy_agree(boot, |proxy, dir, a| run(proxy, dir, a, &cases));
    let line = |label: &str| {
        got.iter()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .cloned()
            .unwrap_or_default()
    };
    let has = |label: &str, want: &str| {
        assert!(
            line(label).contains(want),
            "{label}: want {want:?} in {}",
            line(label)
        );
    };
    // abseil's base64: padding optional, whitespace skipped, `nil` for what does not decode;
    // a wrong argument type is Lua's argument error.
    has("base64", "escape => boolean:true string:aGVsbG8/PgD/");
    has(
        "base64",
        "decode \\\"aGVs bG8=\\\\\\n\\\" => boolean:true string:hello",
    );
    has("base64", "decode \\\"aGVsbG8==\\\" => boolean:true nil:nil");
    has(
        "base64",
        "decode table => boolean:false string:bad argument #2 to '?' (string expected, got table)",
    );
    // An error the script does not catch is counted; the request goes on as it stood.
    has("base64, uncaught", "| upstream: GET /b64-uncaught");
    has("base64, uncaught", "[x-t-before=1]");
    // The route's metadata under the filter's name, else `envoy.filters.http.lua`;
    // `route():metadata()` under the filter's name only.
    has("metadata", "get foo => boolean:true string:mine");
    has("metadata", "virtual host vh=string:v");
    has(
        "metadata, fallback",
        "get foo => boolean:true string:general",
    );
    has("metadata, fallback", "\\nroute \\n");
    has("metadata, none", "pairs \\nroute \\n");
    has(
        "filter context",
        "pairs fk=string:fv;n=number:3;nested={l={1=string:a,2=number:1,3=boolean:true}}",
    );
    // Dynamic metadata: seen by the next filter and by the response pass.
    // A route's `filter_context` replaces the filter's.
    has("filter context, route's", "[x-t-fc=route 0]");
    has("dynamic metadata", "x-t-dm=from my.lua w");
    has("dynamic metadata", "x-t-dm-resp=from my.lua");
    has(
        "dynamic metadata",
        "set function => boolean:false string:unexpected type 'function' in dynamicMetadata",
    );
    has("dynamic metadata", "pairs 5={6=number:7};ns={k=string:w,t={a=number:1,b={1=number:1,2=number:2,3=string:x},c=boolean:true,e={}}}");
    has("dynamic metadata, uncaught", "[x-t-dm=before nil]");
    // The virtual cluster is named once the router sent the request.
    has("stream info", "x-t-resp-route=catch-all[vc1]");
    has(
        "stream info",
        "[x-t-local=127.0.0.1 x-t-route=catch-all x-t-ssl=nil x-t-vc=[]]",
    );
    has("verify", "good => boolean:true boolean:true nil:nil");
    has(
        "verify",
        "other text => boolean:true boolean:false string:Failed to verify digest. Error code: 0",
    );
    has(
        "verify",
        "unknown hash => boolean:true boolean:false string:md5 is not supported.",
    );
    has(
        "verify",
        "unknown key => boolean:false string:invalid public key",
    );
    // The key is known by its text up to its first NUL; a handle keeps its first key.
    has("verify", "key => boolean:true number:17");
    has("verify", "second import => boolean:true boolean:true");
    has("verify, EC", "good => boolean:true boolean:true");
    has("import, bad key", "then good => boolean:true nil:nil");
    has("verify, uncaught", "[x-t-before=1]");
    has(
        "timestamps",
        "bad unit => boolean:false string:timestamp format must be MILLISECOND.",
    );
    assert_eq!(got[cases.len()..], ["errors=3", "executions=31"]);
}
