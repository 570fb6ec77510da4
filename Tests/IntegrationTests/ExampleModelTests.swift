import Foundation
import Testing

/// `examples/model.py` is what users copy for a process replica: it must not hold requests
/// back behind Nagle's algorithm, nor refuse a burst of connections (issue 20, item 14).
@Suite("examples/model.py")
struct ExampleModelTests {
    /// Starts the example on a free port, measures it from a Python client, and reads its
    /// listening socket's backlog with `ss` (the Send-Q of a LISTEN socket is its backlog).
    static let probe = #"""
        import http.client, json, os, socket, statistics, subprocess, sys, time
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        env = dict(os.environ, PORT=str(port))
        child = subprocess.Popen([sys.executable, "examples/model.py"], env=env)
        try:
            for _ in range(500):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.01)
            listing = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], capture_output=True, text=True).stdout.split()
            conn = http.client.HTTPConnection("127.0.0.1", port)
            times = []
            for i in range(21):
                start = time.monotonic()
                conn.request("GET", "/predict?x=%d" % i)
                conn.getresponse().read()
                times.append(time.monotonic() - start)
            conn.request("POST", "/upload", body=iter([b"abc", b"de"]), encode_chunked=True)
            chunked = json.loads(conn.getresponse().read())
            conn.close()
            print(json.dumps({"backlog": int(listing[2]), "median_ms": statistics.median(times[1:]) * 1000,
                              "chunked_bytes": chunked["received_bytes"]}))
        finally:
            child.kill()
            child.wait()
        """#

    @Test("a large listen backlog, TCP_NODELAY (no 40 ms delayed-ACK stall per request), chunked request bodies")
    func exampleServer() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.probe]
        process.currentDirectoryURL = packageRoot
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let text = String(decoding: output, as: UTF8.self)
        let result = try #require(try? JSONSerialization.jsonObject(with: output) as? [String: Any], "\(text)")
        let backlog = try #require(result["backlog"] as? Int)
        #expect(backlog >= 128, "listen backlog \(backlog)")
        // With Nagle on, the body waits for the client's delayed ACK of the head: 40 ms or more
        // on Linux for every request on a reused connection. Without it, about a millisecond.
        let median = try #require(result["median_ms"] as? Double)
        #expect(median < 20, "median request on a reused connection took \(median) ms")
        #expect(result["chunked_bytes"] as? Int == 5)
    }
}
