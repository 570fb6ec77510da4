import Foundation
import Testing

@testable import ServeCore

@Suite("Cluster config (--cluster-config)")
struct ClusterConfigTests {
    func problems(_ text: String) -> [String] {
        do {
            _ = try ClusterConfigParser.parse(text)
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    @Test("DESIGN.md's example parses with Ray's defaults filled in")
    func designExample() throws {
        let config = try ClusterConfigParser.parse(
            """
            provider: {type: local}
            max_workers: 10
            node_types:
              cpu2: {resources: {CPU: 2}, min_workers: 0, max_workers: 6}
              gpu:  {resources: {CPU: 8, GPU: 1, "accelerator_type:A100": 1}, min_workers: 0, max_workers: 2, labels: {zone: a}}
            """
        )
        #expect(config.provider == .local(LocalProviderConfig()))
        #expect(config.maxWorkers == 10)
        #expect(config.idleTimeoutS == 300)
        #expect(config.upscalingSpeed == 1)
        #expect(config.maxConcurrentLaunches == 10)
        #expect(config.nodeTypes.map(\.name) == ["cpu2", "gpu"])
        let gpu = try #require(config.nodeType(named: "gpu"))
        #expect(gpu.resources == ["CPU": 8, "GPU": 1, "accelerator_type:A100": 1])
        #expect(gpu.acceleratorType == "A100")
        #expect(gpu.labels == ["zone": "a"])
        #expect(
            gpu.workerFlags == [
                "--node-type", "gpu", "--num-cpus", "8", "--num-gpus", "1", "--accelerator-type", "A100", "--labels", "zone=a",
            ])
    }

    @Test("JSON works too, and a type's max_workers defaults to the global one")
    func jsonAndDefaults() throws {
        let config = try ClusterConfigParser.parse(
            #"{"provider": {"type": "local"}, "max_workers": 4, "idle_timeout_s": 2, "upscaling_speed": 0.5, "node_types": {"c": {"resources": {"CPU": 1, "custom": 2, "memory": 1000}}}}"#
        )
        #expect(config.nodeTypes[0].maxWorkers == 4)
        #expect(config.idleTimeoutS == 2)
        #expect(config.upscalingSpeed == 0.5)
        #expect(config.nodeTypes[0].workerFlags == ["--node-type", "c", "--num-cpus", "1", "--num-gpus", "0", "--memory", "1000", "--resources", #"{"custom":2}"#])
    }

    @Test("the command provider takes strings (for /bin/sh) and argv lists")
    func commandProvider() throws {
        let config = try ClusterConfigParser.parse(
            """
            provider:
              type: command
              launch: deploy/command-provider/launch.sh
              terminate: [deploy/command-provider/terminate.sh]
              list: [python3, list.py]
              head_address: 10.0.0.1:6380
              timeout_s: 5
            node_types: {cpu2: {resources: {CPU: 2}, max_workers: 3}}
            """
        )
        guard case .command(let command) = config.provider else {
            Issue.record("not a command provider: \(config.provider)")
            return
        }
        #expect(command.launch == ["/bin/sh", "-c", #"deploy/command-provider/launch.sh "$@""#, "sh"])
        #expect(command.terminate == ["deploy/command-provider/terminate.sh"])
        #expect(command.list == ["python3", "list.py"])
        #expect(command.headAddress == "10.0.0.1:6380")
        #expect(command.timeoutS == 5)
    }

    @Test("every mistake is reported with its field path, and the file is refused whole")
    func mistakes() {
        let found = problems(
            """
            provider: {type: comand}
            max_workers: 1
            idle_timeout_s: -1
            upscaling_speed: fast
            max_concurrent_launches: 0
            node_type: {}
            node_types:
              cpu2: {resources: {CPU: -2}, min_workers: 1, max_workers: 3}
              gpu: {resources: {GPU: 0.5, "accelerator_type:A100": 1, "accelerator_type:H100": 1}, min_workers: 4, max_workers: 2}
              head: {resources: {CPU: 1}, max_workers: 1}
              nomax: {resources: {CPU: 1}, min_workers: 1, max_workers: 1, lables: {}}
            """
        )
        #expect(
            found == [
                "node_type: unknown field (did you mean node_types?)",
                "provider.type: unknown provider \"comand\" (did you mean command?); one of: local, command, kubernetes",
                "idle_timeout_s: must be at least 0, not -1",
                "upscaling_speed: must be a number, not a string (\"fast\")",
                "max_concurrent_launches: must be at least 1, not 0",
                "node_types.cpu2.resources.CPU: must be at least 0, not -2",
                "node_types.gpu.resources.GPU: a node has whole GPUs, not 0.5",
                "node_types.gpu.resources.accelerator_type:H100: a node has one accelerator type; accelerator_type:A100 is already given",
                "node_types.gpu.min_workers: must be at most max_workers (2), not 4",
                "node_types.head: a node type needs a plain name (not empty, not \"head\", no spaces or commas)",
                "node_types.nomax.lables: unknown field (did you mean labels?)",
                "max_workers: must be at least the node types' min_workers together (2), not 1",
            ])
    }

    @Test("missing parts are named")
    func missing() {
        #expect(
            problems("max_workers: 2")
                == [
                    "provider: required field is missing (e.g. {type: local})",
                    "node_types: required field is missing (a mapping of type names to {resources, max_workers})",
                ])
        #expect(
            problems("provider: {type: command, launch: [], list: 3}\nnode_types: {a: {resources: {CPU: 1}}}")
                == [
                    "provider.launch: must be a non-empty command: a string for /bin/sh, or an argv list",
                    "provider.terminate: required field is missing (a command: a string for /bin/sh, or an argv list)",
                    "provider.list: must be a non-empty command: a string for /bin/sh, or an argv list",
                    "node_types.a.max_workers: required field is missing (here or as the top-level max_workers)",
                ])
        #expect(problems("provider: {type: local, launch: x}\nnode_types: {}") == [
            "provider.launch: unknown field (expected one of: type, worker_path)",
            "node_types: must name at least one node type",
        ])
    }
}

@Suite("Cluster config examples")
struct ClusterConfigExampleTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("examples/cluster-local.yaml and examples/cluster-command.yaml parse", arguments: ["cluster-local.yaml", "cluster-command.yaml"])
    func examplesParse(file: String) throws {
        let text = try String(contentsOf: Self.root.appendingPathComponent("examples/\(file)"), encoding: .utf8)
        let config = try ClusterConfigParser.parse(text)
        #expect(!config.nodeTypes.isEmpty)
    }
}
