/* 16550 UART at 0x3f8: polled transmit. Registers: PC16550D data sheet, table 2. */
#include "testkit.h"

#define UART_THR 0	/* DLAB=0: transmit / receive buffer */
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_THRE 0x20

void serial_init(void)
{
	outb(COM1 + UART_IER, 0x00);
	outb(COM1 + UART_LCR, 0x80);	/* DLAB: divisor 1 = 115200 baud */
	outb(COM1 + UART_THR, 0x01);
	outb(COM1 + UART_IER, 0x00);
	outb(COM1 + UART_LCR, 0x03);	/* 8N1 */
	/* FIFOs stay off: toggling FCR.FE clears the receive FIFO (and any input already there). */
	outb(COM1 + UART_MCR, 0x0b);	/* DTR, RTS, OUT2 (OUT2 gates the IRQ line on PCs) */
}

void serial_putc(char c)
{
	while (!(inb(COM1 + UART_LSR) & LSR_THRE))
		cpu_relax();
	outb(COM1 + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, size_t n)
{
	while (n--) serial_putc(*s++);
}
