import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Testing

/// The proxy as an HTTP intermediary (DESIGN.md, "The proxy is a faithful HTTP intermediary"):
/// the real binaries, a process replica that misbehaves on purpose, and real clients on both
/// sides of it (Python's http.client and raw sockets for HTTP/1.1, curl and h2load for h2c).
@Suite("The proxy as an HTTP intermediary", .serialized)
struct ProxyFramingTests {
    /// A replica written the way users write them (Python's standard library), with one path per
    /// case: what it saw of the request, a body with a length, a gzip body, bodies cut short, a
    /// 204 that announces a body, trailers.
    static let replica = #"""
        import gzip, json, os
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        BIG = bytes(i % 251 for i in range(5000))
        GZIPPED = gzip.compress(b"hello gzip " * 300)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def body(self):
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("content-length", "0") or "0")
                return self.rfile.read(length) if length else b""

            def send(self, status, body, fields=()):
                self.send_response(status)
                for name, value in fields:
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def any(self):
                path = self.path.split("?")[0]
                if path == "/healthz":
                    return self.send(200, b"ok")
                if path == "/echo":
                    seen = {"method": self.command, "target": self.path,
                            "headers": [[k.lower(), v] for k, v in self.headers.items()],
                            "body": self.body().decode("latin-1")}
                    return self.send(200, json.dumps(seen).encode())
                if path == "/latin":
                    # Python's http.server reads and writes header values as Latin-1: the bytes
                    # that arrived go back unchanged, as a field and as numbers in the body.
                    value = self.headers.get("x-latin", "")
                    return self.send(200, json.dumps([ord(c) for c in value]).encode(),
                                     [("x-latin-back", value), ("x-made", "caf\xe9")])
                if path == "/big":
                    return self.send(200, BIG, [("content-type", "application/octet-stream")])
                if path == "/gzipped":
                    return self.send(200, GZIPPED, [("content-encoding", "gzip"), ("content-type", "text/plain")])
                if path == "/no-content":
                    # A 204 that says it has five bytes, and sends them: RFC 9110 forbids both.
                    self.send_response(204)
                    self.send_header("content-length", "5")
                    self.end_headers()
                    self.wfile.write(b"hello")
                    return
                if path == "/cut-length":
                    self.send_response(200)
                    self.send_header("content-length", "1000000")
                    self.end_headers()
                    self.wfile.write(b"x" * 50000)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if path == "/cut-chunked":
                    self.send_response(200)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for _ in range(3):
                        self.wfile.write(b"1000\r\n" + b"y" * 4096 + b"\r\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if path == "/trailers":
                    self.send_response(200)
                    self.send_header("transfer-encoding", "chunked")
                    self.send_header("trailer", "x-checksum")
                    self.end_headers()
                    self.wfile.write(b"5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n")
                    return
                self.send(404, b"no such path\n")

            do_GET = do_HEAD = do_POST = do_PUT = any

        ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
        """#

    /// An HTTP/1.1 client in Python: `http` steps go through one http.client connection (opened
    /// again after an error), `raw` steps write bytes on a fresh socket and read until it closes
    /// or goes quiet. Prints one JSON result per step.
    static let client = #"""
        import http.client, json, socket, sys
        port = int(sys.argv[1])
        steps = json.load(open(sys.argv[2]))
        results = []
        conn = None
        for step in steps:
            if step["kind"] == "raw":
                s = socket.create_connection(("127.0.0.1", port))
                s.settimeout(step.get("quiet", 3))
                s.sendall(step["data"].encode("latin-1"))
                data, closed = b"", False
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            closed = True
                            break
                        data += chunk
                except socket.timeout:
                    pass
                s.close()
                results.append({"raw": data.decode("latin-1"), "closed": closed})
                continue
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            body = step.get("body")
            try:
                conn.putrequest(step["method"], step["path"], skip_host=True, skip_accept_encoding=True)
                for name, value in step.get("headers", [["host", "127.0.0.1"]]):
                    conn.putheader(name, value.encode("latin-1"))
                if body is not None:
                    conn.putheader("content-length", str(len(body.encode("latin-1"))))
                conn.endheaders(body.encode("latin-1") if body is not None else None)
                response = conn.getresponse()
                data = response.read()
                results.append({"status": response.status,
                                "headers": [[k.lower(), v] for k, v in response.getheaders()],
                                "body": data.decode("latin-1"), "error": None})
            except Exception as error:
                results.append({"status": None, "headers": [], "body": "", "error": type(error).__name__})
                conn.close()
                conn = None
        print(json.dumps(results))
        """#

    struct Response {
        var status: Int?
        var headers: [(String, String)]
        var body: String
        var error: String?

        func field(_ name: String) -> String? { self.headers.first { $0.0 == name }?.1 }
        func fields(_ name: String) -> [String] { self.headers.filter { $0.0 == name }.map(\.1) }
    }

    static func http(
        _ method: String, _ path: String, headers: [[String]] = [["host", "127.0.0.1"]], body: String? = nil
    ) -> JSONValue {
        var step: [String: JSONValue] = [
            "kind": .string("http"), "method": .string(method), "path": .string(path),
            "headers": .array(headers.map { .array($0.map { .string($0) }) }),
        ]
        if let body { step["body"] = .string(body) }
        return .object(step)
    }

    static func raw(_ data: String, quiet: Double = 3) -> JSONValue {
        .object(["kind": .string("raw"), "data": .string(data), "quiet": .number(quiet)])
    }

    /// Runs the Python client's steps against the ingress.
    static func python(_ port: Int, _ steps: [JSONValue]) async throws -> [JSONValue] {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("proxy-steps-\(UUID().uuidString).json")
        try JSONValue.array(steps).jsonString().write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let (status, output) = try await Self.run("/usr/bin/env", ["python3", "-c", Self.client, String(port), file.path])
        guard status == 0, let results = try JSONValue.parse(output).arrayValue else {
            throw HarnessFailure("the Python client failed (\(status)):\n\(output)")
        }
        return results
    }

    static func response(_ value: JSONValue) -> Response {
        Response(
            status: value["status"]?.doubleValue.map { Int($0) },
            headers: (value["headers"]?.arrayValue ?? []).compactMap { pair in
                guard let name = pair.arrayValue?.first?.stringValue, let value = pair.arrayValue?.last?.stringValue else { return nil }
                return (name, value)
            },
            body: value["body"]?.stringValue ?? "",
            error: value["error"]?.stringValue)
    }

    /// Runs a program to its end; its exit status and its output (stdout and stderr together).
    static func run(_ program: String, _ arguments: [String], timeout: Duration = .seconds(60)) async throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("proxy-client-\(UUID().uuidString).out")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: output) }
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now > deadline {
                process.terminate()
                throw HarnessFailure("\(program) \(arguments.prefix(3)) ran past \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        try handle.close()
        return (process.terminationStatus, String(decoding: try Data(contentsOf: output), as: UTF8.self))
    }

    /// curl over h2c (prior knowledge): exit status, the response head and the body's size.
    static func curlH2(_ port: Int, _ path: String, _ extra: [String] = []) async throws -> (Int32, String) {
        try await Self.run(
            "/usr/bin/curl",
            ["--silent", "--http2-prior-knowledge", "--max-time", "20", "-D", "-", "-o", "/dev/null",
             "-w", "size=%{size_download}\n"] + extra + ["http://127.0.0.1:\(port)\(path)"])
    }

    /// A head, one worker, the Python replica at /p and Swift's echo at /e.
    static func withReplicas(_ body: (TestCluster) async throws -> Void) async throws {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("framing-\(UUID().uuidString).py")
        try Self.replica.write(to: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: script) }
        try await withCluster { cluster in
            try await cluster.addWorker(cpus: 2)
            _ = try await cluster.waitForNodes(1)
            try await cluster.deploy("""
                applications:
                  - name: p
                    route_prefix: /p
                    deployments:
                      - name: P
                        command: ["python3", "\(script.path)"]
                        health_path: /healthz
                        ray_actor_options: {num_cpus: 0.5}
                  - name: e
                    route_prefix: /e
                    deployments:
                      - name: E
                        handler: echo
                        ray_actor_options: {num_cpus: 0.5}
                """)
            _ = try await cluster.waitForRunning(app: "p", deployment: "P", replicas: 1)
            _ = try await cluster.waitForRunning(app: "e", deployment: "E", replicas: 1)
            try await body(cluster)
        }
    }

    @Test("a replica's framing reaches HTTP/1.1 and h2c clients as it sent it: length, HEAD, gzip, 204, trailers")
    func responsesPassThrough() async throws {
        try await Self.withReplicas { cluster in
            let port = cluster.httpPort
            let results = try await Self.python(port, [
                Self.http("GET", "/p/big", headers: [["host", "127.0.0.1"], ["accept-encoding", "gzip, deflate"]]),
                Self.http("HEAD", "/p/big"),
                Self.http("GET", "/p/gzipped", headers: [["host", "127.0.0.1"], ["accept-encoding", "gzip"]]),
                Self.http("GET", "/p/no-content"),
                Self.http("GET", "/p/no-content"),
                Self.http("GET", "/p/big"),
                Self.raw("GET /p/trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n"),
            ])
            let big = Self.response(results[0])
            #expect(big.status == 200)
            #expect(big.field("content-length") == "5000", "\(big.headers)")
            #expect(big.field("transfer-encoding") == nil)
            #expect(big.field("vary") == nil)
            #expect(big.field("content-encoding") == nil)
            #expect(big.body.count == 5000)
            let head = Self.response(results[1])
            #expect(head.status == 200)
            #expect(head.field("content-length") == "5000", "\(head.headers)")
            #expect(head.field("transfer-encoding") == nil)
            let gzipped = Self.response(results[2])
            #expect(gzipped.field("content-encoding") == "gzip", "\(gzipped.headers)")
            #expect(gzipped.field("content-length") == String(gzipped.body.count))
            #expect(gzipped.body.hasPrefix("\u{1f}\u{8b}"), "the gzip body was changed")
            for noContent in [Self.response(results[3]), Self.response(results[4])] {
                #expect(noContent.status == 204, "\(noContent)")
                #expect(noContent.field("content-length") == nil)
                #expect(noContent.body.isEmpty)
            }
            #expect(Self.response(results[5]).body.count == 5000, "the connection after the 204s still works")
            let trailers = results[6]["raw"]?.stringValue ?? ""
            let announced = trailers.lowercased().contains("\r\ntrailer: x-checksum")
            let sent = trailers.lowercased().contains("\r\nx-checksum: abc123\r\n")
            #expect(announced == sent, "Trailer: and the trailer travel together:\n\(trailers)")
            #expect(sent, "\(trailers)")

            // The same over h2c.
            let (status, h2big) = try await Self.curlH2(port, "/p/big", ["-H", "accept-encoding: gzip"])
            #expect(status == 0)
            #expect(h2big.contains("content-length: 5000"), "\(h2big)")
            #expect(!h2big.contains("vary"))
            #expect(h2big.contains("size=5000"))
            let (_, h2head) = try await Self.curlH2(port, "/p/big", ["--head"])
            #expect(h2head.contains("content-length: 5000"), "\(h2head)")
            let (_, h2gzip) = try await Self.curlH2(port, "/p/gzipped", ["-H", "accept-encoding: gzip"])
            #expect(h2gzip.contains("content-encoding: gzip"), "\(h2gzip)")
            let (noContentStatus, h2noContent) = try await Self.curlH2(port, "/p/no-content")
            #expect(noContentStatus == 0)
            #expect(h2noContent.hasPrefix("HTTP/2 204"), "\(h2noContent)")
        }
    }

    @Test("a response the replica cuts short reaches the client as a cut, over HTTP/1.1 and h2c")
    func cutsStayCuts() async throws {
        try await Self.withReplicas { cluster in
            let port = cluster.httpPort
            let results = try await Self.python(port, [Self.http("GET", "/p/cut-length"), Self.http("GET", "/p/cut-chunked")])
            for (index, result) in results.enumerated() {
                let response = Self.response(result)
                // http.client reads a body short of its length, or without its last chunk, as
                // IncompleteRead; a clean end would have no error.
                #expect(response.error == "IncompleteRead", "step \(index): \(response)")
            }
            for path in ["/p/cut-length", "/p/cut-chunked"] {
                let (status, output) = try await Self.curlH2(port, path)
                // 92: HTTP/2 stream error (RST_STREAM); 18: a body short of its length.
                #expect(status == 92 || status == 18, "curl exit \(status) for \(path):\n\(output)")
            }
        }
    }

    @Test("requests reach a process replica as the client sent them: no framing without a body, its authority, X-Forwarded-*")
    func requestsPassThrough() async throws {
        try await Self.withReplicas { cluster in
            let port = cluster.httpPort
            let results = try await Self.python(port, [
                Self.http("GET", "/p/echo?x=1", headers: [["host", "app.example:8080"]]),
                Self.http("POST", "/p/echo", body: "some body"),
                Self.raw("GET http://abs.example:8000/p/echo HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n"),
            ])
            let get = try JSONValue.parse(Self.response(results[0]).body)
            let seen = Dictionary((get["headers"]?.arrayValue ?? []).compactMap { pair -> (String, String)? in
                guard let name = pair.arrayValue?.first?.stringValue, let value = pair.arrayValue?.last?.stringValue else { return nil }
                return (name, value)
            }, uniquingKeysWith: { first, _ in first })
            #expect(seen["transfer-encoding"] == nil, "a GET without a body went with framing: \(seen)")
            #expect(seen["content-length"] == nil, "\(seen)")
            #expect(seen["host"] == "app.example:8080")
            #expect(seen["x-forwarded-host"] == "app.example:8080")
            #expect(seen["x-forwarded-proto"] == "http")
            #expect(seen["x-forwarded-for"] == "127.0.0.1")
            #expect(get["target"]?.stringValue == "/echo?x=1")
            let post = try JSONValue.parse(Self.response(results[1]).body)
            #expect(post["body"]?.stringValue == "some body")
            let absolute = results[2]["raw"]?.stringValue ?? ""
            #expect(absolute.hasPrefix("HTTP/1.1 200"), "\(absolute)")
            #expect(absolute.contains(#"["host", "abs.example:8000"]"#), "\(absolute)")

            // h2c: the :authority is the Host the replica sees.
            let (status, output) = try await Self.run(
                "/usr/bin/curl",
                ["--silent", "--http2-prior-knowledge", "-H", "host: app.example:8080", "http://127.0.0.1:\(port)/p/echo"])
            #expect(status == 0)
            let h2 = try JSONValue.parse(output)
            let h2Host = (h2["headers"]?.arrayValue ?? []).first { $0.arrayValue?.first?.stringValue == "host" }?.arrayValue?.last?.stringValue
            #expect(h2Host == "app.example:8080", "\(output)")

            // An h2c upload without content-length (curl -T -, httpx with a generator) has a body
            // all the same: HEADERS without END_STREAM (HTTPServerRequest.hasBody).
            let upload = FileManager.default.temporaryDirectory.appendingPathComponent("upload-\(UUID().uuidString)")
            try Data(repeating: 0x61, count: 1000).write(to: upload)
            defer { try? FileManager.default.removeItem(at: upload) }
            for path in ["/p/echo", "/e/x"] {
                let (status, output) = try await Self.run(
                    "/usr/bin/curl",
                    ["--silent", "--http2-prior-knowledge", "-H", "content-length:", "--data-binary", "@\(upload.path)",
                     "http://127.0.0.1:\(port)\(path)"])
                #expect(status == 0)
                #expect(output.contains(String(repeating: "a", count: 1000)), "\(path): \(output.prefix(300))")
            }

            // Many bodyless requests over h2c on few connections: a stray `0` chunk would be read
            // by the replica as its next request and answered with an error.
            let (loadStatus, load) = try await Self.run(
                "/usr/bin/h2load", ["-n", "300", "-c", "4", "-m", "10", "http://127.0.0.1:\(port)/p/echo?x=3"])
            #expect(loadStatus == 0, "\(load)")
            #expect(load.contains("status codes: 300 2xx, 0 3xx, 0 4xx, 0 5xx"), "\(load)")
        }
    }

    @Test("header values are bytes: 0xE9 reaches a process replica and comes back unchanged, over HTTP/1.1 and h2c")
    func headerValueBytes() async throws {
        try await Self.withReplicas { cluster in
            let port = cluster.httpPort
            // A raw socket: the request's bytes as written (Latin-1 in the step), the response's as
            // read (decoded as Latin-1, so U+00E9 here is the byte 0xE9, and U+FFFD would show).
            let results = try await Self.python(port, [
                Self.raw("GET /p/latin HTTP/1.1\r\nHost: x\r\nX-Latin: caf\u{E9} \u{FF}\r\nConnection: close\r\n\r\n")
            ])
            let raw = results[0]["raw"]?.stringValue ?? ""
            #expect(raw.hasPrefix("HTTP/1.1 200"), "\(raw)")
            #expect(raw.contains("[99, 97, 102, 233, 32, 255]"), "the replica did not get the bytes sent: \(raw)")
            #expect(raw.lowercased().contains("x-latin-back: caf\u{E9} \u{FF}\r\n"), "\(raw)")
            #expect(raw.lowercased().contains("x-made: caf\u{E9}\r\n"), "\(raw)")

            // h2c into the same HTTP/1.1 hop to the replica: the same bytes both ways.
            let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: port)
            var fields = HTTPFields()
            fields.append(HTTPField(name: HTTPField.Name("x-latin")!, lenientValue: [0x63, 0x61, 0x66, 0xE9]))
            let response = try await client.send(
                HTTPRequest(method: .get, scheme: "http", authority: "x", path: "/p/latin", headerFields: fields))
            let body = String(buffer: try await response.body.collect(upTo: 1 << 16))
            await client.close()
            #expect(body == "[99, 97, 102, 233]", "the replica did not get the bytes sent over h2c: \(body)")
            let back = response.head.headerFields.first { $0.name.canonicalName == "x-latin-back" }
            #expect(back?.withUnsafeBytesOfValue { Array($0) } == [0x63, 0x61, 0x66, 0xE9])
            let made = response.head.headerFields.first { $0.name.canonicalName == "x-made" }
            #expect(made?.withUnsafeBytesOfValue { Array($0) } == [0x63, 0x61, 0x66, 0xE9])
        }
    }

    @Test("malformed requests get 400 on every path: a body that is not the gzip it claims, two Hosts, an empty Transfer-Encoding")
    func badRequests() async throws {
        try await Self.withReplicas { cluster in
            let port = cluster.httpPort
            let notGzip = String(repeating: "this is not gzip ", count: 10)
            let big = String(repeating: "this is not gzip either ", count: 5000)
            let gzipHeaders = [["host", "127.0.0.1"], ["content-encoding", "gzip"]]
            let results = try await Self.python(port, [
                Self.http("POST", "/p/echo", headers: gzipHeaders, body: notGzip),
                Self.http("POST", "/e/x", headers: gzipHeaders, body: notGzip),
                Self.http("POST", "/p/echo", headers: gzipHeaders, body: big),
                Self.http("POST", "/e/x", headers: gzipHeaders, body: big),
                Self.raw("GET /e/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
                Self.raw("POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n"),
                Self.raw("GET /p/echo HTTP/1.1\r\nHost: a\r\nTE: \r\nConnection: close\r\n\r\n"),
            ])
            for index in 0..<4 {
                #expect(Self.response(results[index]).status == 400, "step \(index): \(Self.response(results[index]))")
            }
            for index in 4..<6 {
                let raw = results[index]["raw"]?.stringValue ?? ""
                #expect(raw.hasPrefix("HTTP/1.1 400"), "step \(index): \(raw)")
            }
            // TE is hop-by-hop (RFC 9110 §10.1.4): an empty one is not passed on, nor fatal.
            let te = results[6]["raw"]?.stringValue ?? ""
            #expect(te.hasPrefix("HTTP/1.1 200"), "\(te)")

            // A real gzip body is decoded for the replica, whichever protocol carried it.
            let gzipFile = FileManager.default.temporaryDirectory.appendingPathComponent("body-\(UUID().uuidString).gz")
            defer { try? FileManager.default.removeItem(at: gzipFile) }
            let (zipped, _) = try await Self.run(
                "/usr/bin/env", ["python3", "-c", "import gzip,sys; open(sys.argv[1],'wb').write(gzip.compress(b'zipped body'))", gzipFile.path])
            #expect(zipped == 0)
            for protocolFlag in ["--http1.1", "--http2-prior-knowledge"] {
                let (status, output) = try await Self.run(
                    "/usr/bin/curl",
                    ["--silent", protocolFlag, "-H", "content-encoding: gzip", "--data-binary", "@\(gzipFile.path)",
                     "http://127.0.0.1:\(port)/p/echo"])
                #expect(status == 0)
                #expect(try JSONValue.parse(output)["body"]?.stringValue == "zipped body", "\(protocolFlag): \(output)")
                let (_, bad) = try await Self.run(
                    "/usr/bin/curl",
                    ["--silent", protocolFlag, "-o", "/dev/null", "-w", "%{http_code}", "-H", "content-encoding: gzip",
                     "--data-binary", "not gzip at all", "http://127.0.0.1:\(port)/p/echo"])
                #expect(bad == "400", "\(protocolFlag): a body that is not gzip answered \(bad)")
            }
        }
    }
}
