import Foundation
import Testing

@testable import ServeCore

@Suite("Resources")
struct ResourcesTests {
    @Test("two 0.5 GPU replicas fit exactly one GPU")
    func halvesFitOneGPU() {
        let node: ResourceSet = ["GPU": 1]
        let half: ResourceSet = ["GPU": 0.5]
        #expect(half.fits(in: node))
        let afterOne = node.subtracting(half)
        #expect(half.fits(in: afterOne))
        let afterTwo = afterOne.subtracting(half)
        #expect(afterTwo.isEmpty)
        #expect(!half.fits(in: afterTwo))
        #expect(half.adding(half) == node)
    }

    @Test("ten 0.1 fit one, eleven do not")
    func tenthsAreExact() {
        var available: ResourceSet = ["CPU": 1]
        let tenth: ResourceSet = ["CPU": 0.1]
        for _ in 0..<10 {
            #expect(tenth.fits(in: available))
            available = available.subtracting(tenth)
        }
        #expect(available[ResourceSet.cpu] == .zero)
        #expect(!tenth.fits(in: available))
        // Double arithmetic would leave a residue here.
        var sum = 0.0
        for _ in 0..<10 { sum += 0.1 }
        #expect(sum != 1.0)
    }

    @Test("0.3 + 0.3 + 0.3 + 0.1 == 1")
    func fractionsSumExactly() {
        let sum = ResourceQuantity(0.3) + ResourceQuantity(0.3) + ResourceQuantity(0.3) + ResourceQuantity(0.1)
        #expect(sum == ResourceQuantity(integer: 1))
        #expect(sum.units == ResourceQuantity.scale)
        #expect(sum.doubleValue == 1.0)
    }

    @Test("quantities print as plain decimals", arguments: [
        (1.0, "1"), (0.5, "0.5"), (0.1, "0.1"), (0.25, "0.25"), (2147483648, "2147483648"),
        (0.0001, "0.0001"), (1.05, "1.05"), (-0.5, "-0.5"), (0, "0"), (12.3456, "12.3456"),
    ])
    func quantityDescription(amount: Double, text: String) {
        #expect(ResourceQuantity(amount).description == text)
    }

    @Test("construction rounds to the nearest ten-thousandth and saturates")
    func rounding() {
        #expect(ResourceQuantity(0.00004).units == 0)
        #expect(ResourceQuantity(0.00005).units == 1)
        #expect(ResourceQuantity(1.23456).units == 12346)
        #expect(ResourceQuantity(integer: 3).units == 30_000)
        #expect(ResourceQuantity(.nan) == .zero)
        #expect(ResourceQuantity(1e300).units == .max)
        #expect(ResourceQuantity(0.5) < ResourceQuantity(1))
        #expect(ResourceQuantity(0.5) * 3 == ResourceQuantity(1.5))
        #expect(ResourceQuantity(2.7).integerPart == 2)
    }

    @Test("sets print CPU, GPU, memory first, then the rest alphabetically")
    func setDescription() {
        let set: ResourceSet = [
            "memory": 2_147_483_648, "custom": 2, "GPU": 0.5, "accelerator_type:A100": 1, "CPU": 1,
        ]
        #expect(set.description == "CPU: 1, GPU: 0.5, memory: 2147483648, accelerator_type:A100: 1, custom: 2")
        #expect(ResourceSet().description == "")
    }

    @Test("zero entries are dropped, so sets compare by what they hold")
    func zeroesDropped() {
        var set = ResourceSet(["CPU": 1, "GPU": .zero])
        #expect(set.quantities.keys.sorted() == ["CPU"])
        #expect(set == ["CPU": 1])
        set["GPU"] = 1
        set["GPU"] = .zero
        #expect(set == ["CPU": 1])
        set.quantities = ["CPU": .zero, "custom": 1]
        #expect(set == ["custom": 1])
        #expect(set["missing"] == .zero)
    }

    @Test("protobuf quantities_e4 round-trip")
    func quantitiesE4() {
        let set: ResourceSet = ["CPU": 0.5, "memory": 1024]
        #expect(set.quantitiesE4 == ["CPU": 5000, "memory": 10_240_000])
        #expect(ResourceSet(quantitiesE4: set.quantitiesE4) == set)
        #expect(ResourceSet(quantitiesE4: ["GPU": 0]).isEmpty)
    }

    @Test("shortfall names what is missing, in display order")
    func shortfall() {
        let demand: ResourceSet = ["CPU": 1, "GPU": 0.5, "accelerator_type:A100": 1, "memory": 100]
        let available: ResourceSet = ["CPU": 4, "GPU": 0.25, "memory": 50]
        let lacking = demand.shortfall(in: available)
        #expect(lacking.map(\.name) == ["GPU", "memory", "accelerator_type:A100"])
        #expect(lacking[0].needed == 0.5 && lacking[0].available == 0.25)
        #expect(lacking[2].needed == 1 && lacking[2].available == .zero)
        #expect(demand.shortfall(in: demand).isEmpty)
        #expect(!demand.fits(in: available))
        #expect(ResourceSet().fits(in: ResourceSet()))
    }

    @Test("JSON encoding is plain numbers")
    func codable() throws {
        let set: ResourceSet = ["CPU": 2, "GPU": 0.5]
        let data = try JSONEncoder().encode(set)
        let json = try JSONValue.parse(String(decoding: data, as: UTF8.self))
        #expect(json == ["CPU": 2, "GPU": 0.5])
        #expect(try JSONDecoder().decode(ResourceSet.self, from: data) == set)
    }
}
