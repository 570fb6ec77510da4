import ArgumentParser
import Foundation
import HTTPTypes
import NIOCore
import ServeCore
import ServeEmbedded
import ServeHead
import ServeWire
import ServeWorker

/// `serve`: the command-line client (Ray's `serve` CLI).
@main
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run, deploy and inspect swift-serve applications.",
        version: ServeVersion.string,
        subcommands: [Run.self, Deploy.self, Status.self, Logs.self, Delete.self, Shutdown.self, Simulate.self]
    )
}

/// Where the admin API is: --address, else SERVE_ADDRESS, else the local default.
struct AdminAddress: ParsableArguments {
    @Option(help: "The head's admin API (default: SERVE_ADDRESS, else http://127.0.0.1:8265).")
    var address: String?

    func client() throws -> AdminClient {
        let text = self.address ?? ProcessInfo.processInfo.environment["SERVE_ADDRESS"] ?? "http://127.0.0.1:8265"
        guard let url = URL(string: text), let host = url.host else {
            throw ValidationError("--address must look like http://HOST:8265, got '\(text)'")
        }
        return AdminClient(host: host, port: url.port ?? 8265, token: ProcessInfo.processInfo.environment["SERVE_TOKEN"])
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a head in the foreground (with replicas on this machine), deploy CONFIG; Ctrl-C stops everything."
    )

    @Argument(help: "The config file (YAML or JSON).") var config: String
    @Option(name: .customLong("http-port"), help: "Port of the HTTP ingress.") var httpPort = 8000
    @Option(name: .customLong("http-host"), help: "Address of the HTTP ingress.") var httpHost = "127.0.0.1"
    @Option(name: .customLong("admin-port"), help: "Port of the admin API.") var adminPort = 8265
    @Option(help: "Cluster port.") var port = 6380
    @Option(name: .customLong("num-cpus"), help: "CPUs for replicas (default: cores).") var numCPUs: Double?
    @Option(name: .customLong("num-gpus"), help: "GPUs for replicas (default: detected).") var numGPUs: Double?
    @Option(name: .customLong("state-dir"), help: "Where the head keeps its deployed config and token (default ~/.swift-serve/head).") var stateDir: String?
    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        try self.logging.bootstrap()
        var options = HeadOptions()
        options.httpHost = self.httpHost
        options.httpPort = self.httpPort
        options.adminPort = self.adminPort
        options.clusterPort = self.port
        if let stateDir = self.stateDir { options.stateDirectory = URL(fileURLWithPath: stateDir) }
        var resources = EmbeddedCluster.LocalResources()
        resources.numCPUs = self.numCPUs
        resources.numGPUs = self.numGPUs
        do {
            try await ServeProcess.runHead(options: options, resources: resources, configPath: self.config, banner: "serve run")
        } catch let error as ServeProcessError {
            FileHandle.standardError.write(Data("serve run: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Deploy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Deploy CONFIG to a running head (replaces the whole config).")
    @Argument(help: "The config file (YAML or JSON).") var config: String
    @OptionGroup var admin: AdminAddress

    func run() async throws {
        let text = try String(contentsOfFile: self.config, encoding: .utf8)
        let client = try self.admin.client()
        let (status, body) = try await client.call(.put, "/api/serve/applications/", body: text)
        guard status == 200 else {
            try Self.printRefusal(body)
            throw ExitCode(1)
        }
        print("deployed \(self.config); see `serve status`")
        // Deployed, but not working as meant (a batch size max_ongoing_requests caps).
        for warning in (try? JSONValue.parse(body))?["warnings"]?.arrayValue ?? [] {
            let line = "warning: \(warning["path"]?.stringValue ?? ""): \(warning["message"]?.stringValue ?? "")\n"
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    static func printRefusal(_ body: String) throws {
        guard let value = try? JSONValue.parse(body) else {
            FileHandle.standardError.write(Data((body + "\n").utf8))
            return
        }
        var lines = [value["error"]?.stringValue ?? "refused"]
        for problem in value["problems"]?.arrayValue ?? [] {
            lines.append("  \(problem["path"]?.stringValue ?? ""): \(problem["message"]?.stringValue ?? "")")
        }
        FileHandle.standardError.write(Data((lines.joined(separator: "\n") + "\n").utf8))
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show applications, deployments and replicas (--json for the raw status).")
    @Flag(help: "Print the status JSON.") var json = false
    @OptionGroup var admin: AdminAddress

    func run() async throws {
        let client = try self.admin.client()
        let body = try await client.callExpectingOK(.get, "/api/serve/applications/")
        let nodeAutoscaler = try await NodeAutoscalerStatus.fetch(client)
        let proxies = try await ProxyStatus.fetch(client)
        if self.json {
            if case .object(var object) = try JSONValue.parse(body) {
                if let nodeAutoscaler { object["node_autoscaler"] = nodeAutoscaler }
                object["proxies"] = proxies
                print(JSONValue.object(object).jsonString())
            } else {
                print(body, terminator: body.hasSuffix("\n") ? "" : "\n")
            }
            return
        }
        print(
            StatusTree.render(try JSONValue.parse(body)) + ProxyStatus.render(proxies) + (nodeAutoscaler.map(NodeAutoscalerStatus.render) ?? ""),
            terminator: "")
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete one application, or all of them.")
    @Argument(help: "The application (default: all).") var app: String?
    @OptionGroup var admin: AdminAddress

    func run() async throws {
        let client = try self.admin.client()
        let path = self.app.map { "/api/serve/applications/\($0)" } ?? "/api/serve/applications/"
        try await client.callExpectingOK(.delete, path)
        print(self.app.map { "deleted \($0)" } ?? "deleted all applications")
    }
}

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a process replica's output (from any machine, through the head); --follow keeps printing new lines."
    )
    @Argument(help: "The replica id, as `serve status` shows it (e.g. Model#3fa2c1).") var replica: String
    @Flag(name: [.short, .long], help: "Keep printing what the replica writes, until it stops or Ctrl-C.") var follow = false
    @OptionGroup var admin: AdminAddress

    func run() async throws {
        let client = try self.admin.client()
        var offset = 0
        while true {
            let path = "/api/serve/replicas/\(ReplicaLogs.escape(self.replica))/logs?offset=\(offset)"
            let (status, body, fields) = try await client.send(.get, path)
            guard status == 200 else {
                // A followed replica that stopped has said all it will.
                if self.follow && offset > 0 && status == 404 { return }
                FileHandle.standardError.write(Data("serve logs: the head answered \(status): \(String(buffer: body))\n".utf8))
                throw ExitCode(1)
            }
            if fields[ReplicaLogs.offsetField].flatMap(Int.init) == 0 && offset > 0 {
                FileHandle.standardError.write(Data("serve logs: the log was rotated; reading it from its start\n".utf8))
            }
            // The replica's output as the bytes it wrote.
            FileHandle.standardOutput.write(Data(body.readableBytesView))
            let next = fields[ReplicaLogs.nextField].flatMap(Int.init) ?? offset
            // A full chunk means there is more now; otherwise wait for new lines, or stop.
            if next - offset >= ReplicaLogs.maxChunk || (next != offset && !self.follow) {
                offset = next
                continue
            }
            offset = next
            guard self.follow else { return }
            try await Task.sleep(for: .milliseconds(500))
        }
    }
}

struct Shutdown: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop every application and the head.")
    @OptionGroup var admin: AdminAddress

    func run() async throws {
        try await self.admin.client().callExpectingOK(.post, "/api/serve/shutdown")
        print("the head is shutting down")
    }
}

/// A failure to report as it is (no usage text: the command line was fine).
struct CLIError: Error, CustomStringConvertible {
    var description: String
}

/// Calls the admin API over HTTP/1.1.
struct AdminClient {
    let host: String
    let port: Int
    let token: String?

    func call(_ method: HTTPRequest.Method, _ path: String, body: String? = nil) async throws -> (Int, String) {
        let (status, bytes, _) = try await self.send(method, path, body: body)
        return (status, String(buffer: bytes))
    }

    /// One admin call that must succeed: its body; any other answer is printed as the head gave
    /// it, and the command exits 1.
    @discardableResult
    func callExpectingOK(_ method: HTTPRequest.Method, _ path: String) async throws -> String {
        let (status, body) = try await self.call(method, path)
        guard status == 200 else {
            FileHandle.standardError.write(Data("the head answered \(status): \(body)\n".utf8))
            throw ExitCode(1)
        }
        return body
    }

    /// The status, body (as the bytes it is) and header fields of one admin call.
    func send(_ method: HTTPRequest.Method, _ path: String, body: String? = nil) async throws -> (Int, ByteBuffer, HTTPFields) {
        let pool = HTTP1ConnectionPool(host: self.host, port: self.port)
        defer { Task { await pool.close() } }
        var fields = HTTPFields()
        if let token = self.token { fields[.authorization] = "Bearer \(token)" }
        if body != nil { fields[.contentType] = "application/yaml" }
        let head = HTTPRequest(method: method, scheme: "http", authority: "\(self.host):\(self.port)", path: path, headerFields: fields)
        do {
            let response = try await pool.send(head, body: body.map { ByteBuffer(string: $0) }, timeout: .seconds(60))
            let bytes = try await response.body.collect(upTo: 64 << 20)
            return (response.head.status.code, bytes, response.head.headerFields)
        } catch let error as HTTP2Error {
            throw CLIError(description: "cannot reach the head's admin API at http://\(self.host):\(self.port) (is a head running? --address or SERVE_ADDRESS say where): \(error)")
        }
    }
}

/// `serve status` as a person reads it: applications → deployments → replicas and their nodes.
enum StatusTree {
    static func render(_ status: JSONValue) -> String {
        guard let apps = status["applications"]?.objectValue, !apps.isEmpty else {
            return "no applications deployed\n"
        }
        var out = ""
        for (name, app) in apps.sorted(by: { $0.key < $1.key }) {
            out += "\(name)  \(app["status"]?.stringValue ?? "?")  \(app["route_prefix"]?.stringValue ?? "")\n"
            for (deploymentName, deployment) in (app["deployments"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
                let replicas = deployment["replicas"]?.arrayValue ?? []
                let running = replicas.filter { $0["state"]?.stringValue == "RUNNING" }.count
                let target = Int(deployment["target_replicas"]?.doubleValue ?? 0)
                out += "  \(deploymentName)  \(deployment["status"]?.stringValue ?? "?")  \(running)/\(target) running\n"
                if let message = deployment["message"]?.stringValue, !message.isEmpty {
                    out += "    ! \(message)\n"
                }
                if let autoscaling = deployment["autoscaling"]?.objectValue {
                    let bounds = "\(Int(autoscaling["min_replicas"]?.doubleValue ?? 0))-\(Int(autoscaling["max_replicas"]?.doubleValue ?? 0))"
                    let last = autoscaling["last_decision"]?["reason"]?.stringValue ?? "no change yet"
                    out += "    autoscaling \(bounds): \(last)\n"
                }
                for replica in replicas {
                    let id = replica["replica_id"]?.stringValue ?? "?"
                    let state = replica["state"]?.stringValue ?? "?"
                    let node = replica["node_id"]?.stringValue ?? "-"
                    let ongoing = Int(replica["ongoing_requests"]?.doubleValue ?? 0)
                    let models = replica["model_ids"]?.arrayValue?.compactMap(\.stringValue) ?? []
                    out += "    \(id)  \(state)  node \(node)  ongoing \(ongoing)\(models.isEmpty ? "" : "  models \(models.joined(separator: ","))")\n"
                }
            }
        }
        return out
    }
}

/// Each node's HTTP proxy, from `GET /api/cluster/nodes`.
enum ProxyStatus {
    static func fetch(_ client: AdminClient) async throws -> JSONValue {
        let (status, body) = try await client.call(.get, "/api/cluster/nodes")
        guard status == 200, let nodes = try? JSONValue.parse(body)["nodes"]?.arrayValue else { return .array([]) }
        return .array(nodes.map { node in
            .object([
                "node_id": node["node_id"] ?? .null,
                "state": node["state"] ?? .null,
                "http_address": node["http_address"] ?? .null,
                "proxy_status": node["proxy_status"] ?? .null,
                "proxy_message": node["proxy_message"] ?? .null,
            ])
        })
    }

    static func render(_ proxies: JSONValue) -> String {
        let nodes = proxies.arrayValue ?? []
        guard !nodes.isEmpty else { return "" }
        var out = "proxies\n"
        for node in nodes {
            let id = node["node_id"]?.stringValue ?? "?"
            let status = node["proxy_status"]?.stringValue ?? "NONE"
            let address = node["http_address"]?.stringValue.map { " at \($0)" } ?? ""
            let message = node["proxy_message"]?.stringValue.flatMap { $0.isEmpty ? nil : " (\($0))" } ?? ""
            out += "  \(id)  \(node["state"]?.stringValue ?? "?")  proxy \(status)\(address)\(message)\n"
        }
        return out
    }
}
