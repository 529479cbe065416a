/* Ring 3: this KVM emulates guest kernel code (slow) but runs ring 3 natively, so heavy loops
 * run there. user_call (entry.S) irets to CPL 3 with IOPL 3; the function returns through
 * a #UD at user_exit_point (see entry.S for why not int or SYSCALL). */
#include "testkit.h"

uint64_t user_call(uint64_t (*fn)(uint64_t), uint64_t arg, void *stack_top);
static uint8_t user_stack[65536] __attribute__((aligned(16)));

uint64_t run_user(uint64_t (*fn)(uint64_t), uint64_t arg)
{
	return user_call(fn, arg, user_stack + sizeof user_stack);
}
