/*
 * Test-kit entry: PVH ELF note, 32-bit PVH entry -> long mode, AP trampoline,
 * interrupt stubs, ring-3 entry and return.
 *
 * PVH boot (xen/include/public/elfnote.h, docs/misc/pvh.pandoc): the loader finds the
 * XEN_ELFNOTE_PHYS32_ENTRY (18) note and enters at its address in 32-bit protected mode,
 * paging off, IF=0, with %ebx = physical address of struct hvm_start_info.
 */
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define CR0_PE 0x1
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define CR4_OSFXSR 0x200
#define CR4_OSXMMEXCPT 0x400
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define KERNEL_CS32 0x18
#define USER_DS 0x23
#define USER_CS 0x2b
#define STACK_SIZE 16384

/* ---- ELF note (PT_NOTE). QEMU reads the descriptor as a 64-bit value for ELF64. ---- */
	.section .note.Xen, "a"
	.p2align 2
	.long 4			/* namesz: "Xen\0" */
	.long 8			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.quad pvh_start

/* ---- 32-bit PVH entry (BSP) ---- */
	.section .text.entry, "ax"
	.code32
	.globl pvh_start
pvh_start:
	/* No valid stack yet: take ours before pushfl. Nothing here may change EFLAGS first. */
	movl $boot_stack_top, %esp
	pushfl
	popl entry_eflags
	movl %ebx, start_info_paddr
	movl %cr0, %eax
	movl %eax, entry_cr0
	movl %cr4, %eax
	movl %eax, entry_cr4
	cld
	lgdt gdt_ptr
	jmp to_long_mode_bsp

/* Shared 32-bit -> 64-bit switch: PAE, CR3 = static identity map, EFER.LME, PG (SDM 3A 10.8.5). */
	.macro TO_LONG_MODE target
	movl %cr4, %eax
	orl $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $(CR0_PG | CR0_PE), %eax
	movl %eax, %cr0
	ljmp $KERNEL_CS, $\target
	.endm

to_long_mode_bsp:
	TO_LONG_MODE long_entry_bsp

	.code64
long_entry_bsp:
	movw $KERNEL_DS, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
	movq $boot_stack_top, %rsp
	call testkit_start
1:	cli
	hlt
	jmp 1b

/* ---- AP start: 16-bit trampoline copied to AP_TRAMPOLINE (SIPI vector = addr >> 12) ---- */
	.code16
	.globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (ap_tramp_gdt_ptr - ap_tramp_start)
	movl %cr0, %eax
	orl $CR0_PE, %eax
	movl %eax, %cr0
	ljmpl $KERNEL_CS32, $ap_entry32
	.p2align 3
ap_tramp_gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt
ap_tramp_end:

	.code32
ap_entry32:
	movw $KERNEL_DS, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	TO_LONG_MODE ap_entry64

	.code64
ap_entry64:
	movw $KERNEL_DS, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl $1, %eax
	lock xaddl %eax, ap_next_stack
	incl %eax
	imull $4096, %eax, %eax
	leaq ap_stacks(%rax), %rsp
	call ap_main
2:	cli
	hlt
	jmp 2b

/* ---- interrupt stubs: 16 bytes each, isr_stubs + 16 * vector ---- */
	.p2align 4
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.p2align 4
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	pushq $vec		/* the CPU pushed an error code */
	.else
	pushq $0
	pushq $vec
	.endif
	jmp isr_common
	.set vec, vec + 1
	.endr

isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	call isr_dispatch
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

/* ---- ring 3: uint64_t user_call(fn, arg, user_stack_top) ---- */
	.globl user_call, user_return
user_call:
	pushq %rbx
	pushq %rbp
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, user_saved_rsp
	pushq $USER_DS		/* ss */
	pushq %rdx		/* rsp */
	pushq $0x3002		/* rflags: IOPL=3 (port I/O allowed in ring 3), IF=0 */
	pushq $USER_CS		/* cs */
	pushq $user_trampoline	/* rip */
	iretq
user_trampoline:		/* runs in ring 3 */
	movq %rdi, %rax
	movq %rsi, %rdi
	call *%rax
	movq %rax, %rdi
	/* Back to ring 0 through an exception at a known address: isr_dispatch sees #UD at
	 * user_exit_point from CPL 3 and calls user_return(rdi). Under this machine's kvm_pvm,
	 * `int 0x80` from ring 3 raises #UD and SYSCALL leaves the CPU at CPL 3; exceptions are
	 * delivered through the IDT like on hardware. */
	.globl user_exit_point
user_exit_point:
	ud2

/* void user_return(uint64_t value): resume the kernel context user_call saved. */
user_return:
	movq user_saved_rsp, %rsp
	pushq $2		/* rflags as ring 0 expects them: IOPL 0, IF 0 */
	popfq
	movq %rdi, %rax
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbp
	popq %rbx
	ret

/* ---- data: GDT, identity page tables (prebuilt: kernel-mode code is slow here) ---- */
	.section .data
	.p2align 3
	.globl gdt, gdt_tss
gdt:
	.quad 0
	.quad 0x00af9a000000ffff	/* 0x08 kernel code, 64-bit */
	.quad 0x00cf92000000ffff	/* 0x10 kernel data */
	.quad 0x00cf9a000000ffff	/* 0x18 kernel code, 32-bit (AP start) */
	.quad 0x00cff2000000ffff	/* 0x20 user data, DPL 3 */
	.quad 0x00affa000000ffff	/* 0x28 user code, 64-bit, DPL 3 */
gdt_tss:
	.quad 0, 0			/* 0x30 64-bit TSS, filled in by C */
gdt_end:
	.p2align 3
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

	.globl entry_eflags, entry_cr0, entry_cr4, start_info_paddr, ap_next_stack
entry_eflags:	.long 0
entry_cr0:	.long 0
entry_cr4:	.long 0
start_info_paddr: .long 0
ap_next_stack:	.long 0
	.p2align 3
user_saved_rsp:	.quad 0

/* 4-level identity map of 0..4 GiB with 2 MiB pages (P|RW|US|PS); the top GiB (LAPIC,
 * IOAPIC, MMIO) uncached (PCD|PWT). User-accessible so ring-3 tests can touch RAM. */
	.section .data.pagetables, "aw"
	.p2align 12
	.globl pml4
pml4:
	.quad pdpt + 0x7
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x7, pd + 0x1007, pd + 0x2007, pd + 0x3007
	.fill 508, 8, 0
pd:
	.set i, 0
	.rept 1536
	.quad (i << 21) + 0x87
	.set i, i + 1
	.endr
	.rept 512
	.quad (i << 21) + 0x9f
	.set i, i + 1
	.endr

	.section .bss
	.p2align 12
	.globl boot_stack_top, ap_stacks
boot_stack:	.skip STACK_SIZE
boot_stack_top:
ap_stacks:	.skip 4096 * 9
