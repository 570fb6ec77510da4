import Testing

@testable import ServeCore

@Suite("GPU allocator")
struct GPUAllocatorTests {
    @Test("fractions fill one GPU before the next: 0.5, 0.5, 0.5 → GPU 0, GPU 0, GPU 1")
    func fractionsFillFirst() {
        var gpus = GPUAllocator(gpuIDs: ["0", "1", "2"])
        #expect(gpus.allocate(replicaID: "a", amount: 0.5) == ["0"])
        #expect(gpus.allocate(replicaID: "b", amount: 0.5) == ["0"])
        #expect(gpus.allocate(replicaID: "c", amount: 0.5) == ["1"])
        // The most used GPU that still has room: 0.25 joins "c" on GPU 1, not the empty GPU 2.
        #expect(gpus.allocate(replicaID: "d", amount: 0.25) == ["1"])
        #expect(gpus.usage == ["0": 1, "1": 0.75, "2": 0])
        // Ten tenths fill a GPU exactly (fixed point).
        var tenths = GPUAllocator(gpuIDs: ["0", "1"])
        for index in 0..<10 {
            #expect(tenths.allocate(replicaID: "t\(index)", amount: 0.1) == ["0"])
        }
        #expect(tenths.allocate(replicaID: "t10", amount: 0.1) == ["1"])
        #expect(tenths.usage == ["0": 1, "1": 0.1])
    }

    @Test("whole GPUs take completely free ones, lowest first, in the node's order")
    func wholeGPUs() {
        var gpus = GPUAllocator(gpuIDs: ["0", "1", "2", "3", "10"])
        #expect(gpus.allocate(replicaID: "frac", amount: 0.1) == ["0"])
        #expect(gpus.allocate(replicaID: "one", amount: 1) == ["1"])
        #expect(gpus.allocate(replicaID: "two", amount: 2) == ["2", "3"])
        #expect(gpus.allocate(replicaID: "three", amount: 3) == nil)
        #expect(gpus.allocate(replicaID: "last", amount: 1) == ["10"])
        #expect(gpus.usage == ["0": 0.1, "1": 1, "2": 1, "3": 1, "10": 1])
        #expect(gpus.grant(of: "two") == ["2", "3"])
        #expect(gpus.grant(of: "three") == nil)
    }

    @Test("no fit gives nil and changes nothing; 0 gives no GPUs")
    func noFit() {
        var gpus = GPUAllocator(gpuIDs: ["0", "1"])
        #expect(gpus.allocate(replicaID: "a", amount: 0.6) == ["0"])
        #expect(gpus.allocate(replicaID: "b", amount: 0.6) == ["1"])
        let before = gpus
        // 0.8 is free in total, but not on one GPU.
        #expect(gpus.allocate(replicaID: "c", amount: 0.7) == nil)
        #expect(gpus.allocate(replicaID: "d", amount: 1) == nil)
        #expect(!gpus.canAllocate(0.5))
        #expect(gpus.canAllocate(0.4))
        #expect(gpus == before)
        #expect(gpus.allocate(replicaID: "zero", amount: 0) == [])
        #expect(gpus.grant(of: "zero") == [])
        // Above 1 and not whole: refused, as the config refuses it.
        var two = GPUAllocator(gpuIDs: ["0", "1"])
        #expect(two.allocate(replicaID: "x", amount: 1.5) == nil)
        var none = GPUAllocator(gpuIDs: [])
        #expect(none.allocate(replicaID: "x", amount: 0.5) == nil)
        #expect(none.allocate(replicaID: "x", amount: 0) == [])
    }

    @Test("release, then reuse")
    func releaseAndReuse() {
        var gpus = GPUAllocator(gpuIDs: ["0", "1"])
        #expect(gpus.allocate(replicaID: "a", amount: 1) == ["0"])
        #expect(gpus.allocate(replicaID: "b", amount: 1) == ["1"])
        #expect(gpus.allocate(replicaID: "c", amount: 0.5) == nil)
        gpus.release(replicaID: "a")
        gpus.release(replicaID: "a")
        gpus.release(replicaID: "never")
        #expect(gpus.usage == ["0": 0, "1": 1])
        #expect(gpus.allocate(replicaID: "c", amount: 0.5) == ["0"])
        #expect(gpus.allocate(replicaID: "d", amount: 0.5) == ["0"])
        gpus.release(replicaID: "b")
        #expect(gpus.allocate(replicaID: "e", amount: 1) == ["1"])
        // Allocating again for a replica replaces its grant.
        #expect(gpus.allocate(replicaID: "c", amount: 0.25) == ["0"])
        #expect(gpus.usage == ["0": 0.75, "1": 1])
    }

    @Test("restore rebuilds grants a node reports, and they block new ones")
    func restore() {
        var gpus = GPUAllocator(gpuIDs: ["0", "1", "2", "3"])
        gpus.restore(replicaID: "big", gpuIDs: ["1", "2"], amount: 2)
        gpus.restore(replicaID: "half", gpuIDs: ["3"], amount: 0.5)
        gpus.restore(replicaID: "gone-gpu", gpuIDs: ["7"], amount: 1)
        #expect(gpus.usage == ["0": 0, "1": 1, "2": 1, "3": 0.5, "7": 1])
        #expect(gpus.allocate(replicaID: "frac", amount: 0.5) == ["3"])
        #expect(gpus.allocate(replicaID: "one", amount: 1) == ["0"])
        #expect(gpus.allocate(replicaID: "more", amount: 0.1) == nil)
        gpus.release(replicaID: "big")
        gpus.release(replicaID: "gone-gpu")
        #expect(gpus.usage == ["0": 1, "1": 0, "2": 0, "3": 1])
        #expect(gpus.allocate(replicaID: "two", amount: 2) == ["1", "2"])
    }

    @Test("random grants and releases never put more than one GPU's worth on a GPU")
    func randomized() {
        var random = SeededGenerator(seed: 0x6770_7573)
        let amounts: [ResourceQuantity] = [0, 0.1, 0.25, 0.3, 0.5, 0.75, 1, 2, 3]
        for _ in 0..<300 {
            let count = Int.random(in: 0...8, using: &random)
            var gpus = GPUAllocator(gpuIDs: (0..<count).map(String.init))
            var held: [String: ResourceQuantity] = [:]
            for step in 0..<60 {
                if !held.isEmpty && Int.random(in: 0..<3, using: &random) == 0 {
                    let victim = held.keys.sorted().randomElement(using: &random)!
                    gpus.release(replicaID: victim)
                    held[victim] = nil
                } else {
                    let amount = amounts.randomElement(using: &random)!
                    let id = "r\(step)"
                    let free = gpus.usage.values.map { ResourceQuantity(integer: 1) - $0 }
                    let wholeFree = free.filter { $0 == 1 }.count
                    let fits =
                        amount == .zero
                        || (amount.units >= ResourceQuantity.scale
                            ? wholeFree >= Int(amount.integerPart) : free.contains { $0 >= amount })
                    let grant = gpus.allocate(replicaID: id, amount: amount)
                    #expect((grant != nil) == fits)
                    if let grant {
                        #expect(grant.count == (amount.units >= ResourceQuantity.scale ? Int(amount.integerPart) : (amount == .zero ? 0 : 1)))
                        held[id] = amount
                    }
                }
                #expect(gpus.usage.values.allSatisfy { $0 >= .zero && $0 <= 1 })
                let total = gpus.usage.values.reduce(ResourceQuantity.zero, +)
                #expect(total == held.values.reduce(ResourceQuantity.zero, +))
            }
        }
    }
}
