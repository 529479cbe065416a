/* PCI configuration mechanism 1 (ports 0xCF8/0xCFC), bus 0 only; BAR sizing and placement. */
#include "virtio.h"

static uint32_t cfg_addr(uint8_t dev, uint8_t reg) { return 0x80000000u | ((uint32_t)dev << 11) | (reg & 0xfc); }

uint32_t pci_read32(uint8_t dev, uint8_t reg) { outl(0xcf8, cfg_addr(dev, reg)); return inl(0xcfc); }
uint16_t pci_read16(uint8_t dev, uint8_t reg) { outl(0xcf8, cfg_addr(dev, reg)); return inw(0xcfc + (reg & 2)); }
uint8_t pci_read8(uint8_t dev, uint8_t reg) { outl(0xcf8, cfg_addr(dev, reg)); return inb(0xcfc + (reg & 3)); }
void pci_write32(uint8_t dev, uint8_t reg, uint32_t v) { outl(0xcf8, cfg_addr(dev, reg)); outl(0xcfc, v); }
void pci_write16(uint8_t dev, uint8_t reg, uint16_t v) { outl(0xcf8, cfg_addr(dev, reg)); outw(0xcfc + (reg & 2), v); }

int pci_find(uint16_t vendor, uint16_t device, int nth)
{
	for (int slot = 0; slot < 32; slot++) {
		uint32_t id = pci_read32(slot, 0);
		if ((id & 0xffff) == vendor && (id >> 16) == device && nth-- == 0)
			return slot;
	}
	return -1;
}

static uint64_t next_bar = PCI_BAR_WINDOW;

uint64_t pci_assign_bar(uint8_t dev, int bar)
{
	uint8_t reg = 0x10 + 4 * bar;
	uint32_t old = pci_read32(dev, reg);
	if (old & 1)
		return 0;	/* an I/O BAR: not used by the test kit */
	bool is64 = ((old >> 1) & 3) == 2;
	pci_write16(dev, 0x04, pci_read16(dev, 0x04) & ~2);	/* memory decoding off while sizing */
	pci_write32(dev, reg, 0xffffffff);
	uint32_t mask = pci_read32(dev, reg) & ~0xfu;
	if (!mask)
		return 0;
	uint64_t size = (uint64_t)(~mask) + 1;
	uint64_t addr = (next_bar + size - 1) & ~(size - 1);
	next_bar = addr + size;
	pci_write32(dev, reg, (uint32_t)addr);
	if (is64)
		pci_write32(dev, reg + 4, 0);
	pci_write16(dev, 0x04, pci_read16(dev, 0x04) | 2 | 4);	/* memory decoding + bus master */
	return addr;
}
